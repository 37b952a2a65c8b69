//! Plugin administration messages (API keys 24..=29): deploy, list, describe and remove
//! WebAssembly plugins, and attach them to or detach them from a topic's produce path.
//! Version 0 of each. Every response carries its own error code and message.

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;

/// Uploads a module under a name. Deploying an existing name replaces its module
/// (hot swap): attachments by that name switch to it between batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDeployRequest {
    pub name: String,
    pub version: String,
    pub module: Bytes,
}

/// A deployed plugin (what the SDK's plugin admin calls return, and `meridian
/// plugin list` and `plugin describe` print).
///
/// ```
/// # fn example(plugin: meridian_wire::plugin_messages::PluginInfo) {
/// println!(
///     "{} {} ({}, {} bytes, sha256 {}) on {}",
///     plugin.name,
///     plugin.version,
///     plugin.kind,
///     plugin.size_bytes,
///     plugin.sha256,
///     plugin.attached_to.join(", ")
/// );
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// Hex sha256 of the module: its identity in the broker's content-addressed store.
    pub sha256: String,
    /// `filter`, `transform` or `partitioner`.
    pub kind: String,
    pub size_bytes: u64,
    /// Topics whose produce path runs this plugin.
    pub attached_to: Vec<String>,
}

/// Answer to deploy and describe: the plugin, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfoResponse {
    pub error: ErrorCode,
    pub message: String,
    pub plugin: Option<PluginInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginListResponse {
    pub plugins: Vec<PluginInfo>,
}

/// Names one plugin (describe, remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginNameRequest {
    pub name: String,
}

/// Answer to remove, attach and detach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginResult {
    pub error: ErrorCode,
    pub message: String,
}

/// One plugin in a topic's produce chain: its parameters, limits and what happens
/// to a batch it fails on.
///
/// ```
/// use meridian_wire::plugin_messages::Attachment;
/// let attachment = Attachment {
///     plugin: "json-filter".into(),
///     params: vec![("where".into(), "total>=100".into())],
///     batch_time_max_ms: 0, // the broker's default
///     memory_max_bytes: 0,  // the broker's default
///     on_failure: "dead-letter:orders-dlq".into(),
/// };
/// assert_eq!(attachment.params[0].0, "where");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub plugin: String,
    pub params: Vec<(String, String)>,
    /// Time one batch call may take; 0 means the broker default.
    pub batch_time_max_ms: u32,
    /// Linear memory cap; 0 means the broker default.
    pub memory_max_bytes: u64,
    /// `reject`, `skip` or `dead-letter:TOPIC`.
    pub on_failure: String,
}

/// Appends a plugin to the end of a topic's produce chain (replacing an attachment of
/// the same plugin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicAttachRequest {
    pub topic: String,
    pub attachment: Attachment,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDetachRequest {
    pub topic: String,
    pub plugin: String,
}

/// A filter plugin a consumer asks the broker to run over what it fetches (the fetch
/// attach point): only kept records cross the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFilter {
    pub plugin: String,
    pub params: Vec<(String, String)>,
}

pub(crate) fn put_fetch_filter(w: &mut Writer<'_>, f: &FetchFilter) {
    w.string(&f.plugin);
    put_params(w, &f.params);
}

pub(crate) fn get_fetch_filter(r: &mut Reader) -> Result<FetchFilter, DecodeError> {
    Ok(FetchFilter {
        plugin: r.string()?,
        params: get_params(r)?,
    })
}

fn put_params(w: &mut Writer<'_>, params: &[(String, String)]) {
    w.array(params, |w, (k, v)| {
        w.string(k);
        w.string(v);
    });
}

fn get_params(r: &mut Reader) -> Result<Vec<(String, String)>, DecodeError> {
    r.array(4, |r| Ok((r.string()?, r.string()?)))
}

fn error_code(r: &mut Reader) -> Result<ErrorCode, DecodeError> {
    Ok(ErrorCode::from_u16(r.u16()?))
}

pub(crate) fn put_deploy(w: &mut Writer<'_>, m: &PluginDeployRequest) {
    w.string(&m.name);
    w.string(&m.version);
    w.bytes(&m.module);
}

pub(crate) fn get_deploy(r: &mut Reader) -> Result<PluginDeployRequest, DecodeError> {
    Ok(PluginDeployRequest {
        name: r.string()?,
        version: r.string()?,
        module: r.bytes()?,
    })
}

fn put_info(w: &mut Writer<'_>, p: &PluginInfo) {
    w.string(&p.name);
    w.string(&p.version);
    w.string(&p.sha256);
    w.string(&p.kind);
    w.u64(p.size_bytes);
    w.array(&p.attached_to, |w, t| w.string(t));
}

fn get_info(r: &mut Reader) -> Result<PluginInfo, DecodeError> {
    Ok(PluginInfo {
        name: r.string()?,
        version: r.string()?,
        sha256: r.string()?,
        kind: r.string()?,
        size_bytes: r.u64()?,
        attached_to: r.array(2, |r| r.string())?,
    })
}

pub(crate) fn put_info_response(w: &mut Writer<'_>, m: &PluginInfoResponse) {
    w.u16(m.error as u16);
    w.string(&m.message);
    w.option(m.plugin.as_ref(), put_info);
}

pub(crate) fn get_info_response(r: &mut Reader) -> Result<PluginInfoResponse, DecodeError> {
    Ok(PluginInfoResponse {
        error: error_code(r)?,
        message: r.string()?,
        plugin: r.option(get_info)?,
    })
}

pub(crate) fn put_list_response(w: &mut Writer<'_>, m: &PluginListResponse) {
    w.array(&m.plugins, put_info);
}

pub(crate) fn get_list_response(r: &mut Reader) -> Result<PluginListResponse, DecodeError> {
    Ok(PluginListResponse {
        plugins: r.array(28, get_info)?,
    })
}

pub(crate) fn put_name(w: &mut Writer<'_>, m: &PluginNameRequest) {
    w.string(&m.name);
}

pub(crate) fn get_name(r: &mut Reader) -> Result<PluginNameRequest, DecodeError> {
    Ok(PluginNameRequest { name: r.string()? })
}

pub(crate) fn put_result(w: &mut Writer<'_>, m: &PluginResult) {
    w.u16(m.error as u16);
    w.string(&m.message);
}

pub(crate) fn get_result(r: &mut Reader) -> Result<PluginResult, DecodeError> {
    Ok(PluginResult {
        error: error_code(r)?,
        message: r.string()?,
    })
}

pub(crate) fn put_attach(w: &mut Writer<'_>, m: &TopicAttachRequest) {
    w.string(&m.topic);
    put_attachment(w, &m.attachment);
}

pub(crate) fn get_attach(r: &mut Reader) -> Result<TopicAttachRequest, DecodeError> {
    Ok(TopicAttachRequest {
        topic: r.string()?,
        attachment: get_attachment(r)?,
    })
}

/// An attachment: in `TopicAttach` requests and `DescribeTopics` answers (version 1).
pub(crate) fn put_attachment(w: &mut Writer<'_>, a: &Attachment) {
    w.string(&a.plugin);
    put_params(w, &a.params);
    w.u32(a.batch_time_max_ms);
    w.u64(a.memory_max_bytes);
    w.string(&a.on_failure);
}

pub(crate) fn get_attachment(r: &mut Reader) -> Result<Attachment, DecodeError> {
    Ok(Attachment {
        plugin: r.string()?,
        params: get_params(r)?,
        batch_time_max_ms: r.u32()?,
        memory_max_bytes: r.u64()?,
        on_failure: r.string()?,
    })
}

pub(crate) fn put_detach(w: &mut Writer<'_>, m: &TopicDetachRequest) {
    w.string(&m.topic);
    w.string(&m.plugin);
}

pub(crate) fn get_detach(r: &mut Reader) -> Result<TopicDetachRequest, DecodeError> {
    Ok(TopicDetachRequest {
        topic: r.string()?,
        plugin: r.string()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{
        decode_request, decode_response, encode_request, encode_response, ResponseFrame,
    };
    use crate::messages::{Request, Response};

    fn info() -> PluginInfo {
        PluginInfo {
            name: "f".into(),
            version: "1.2".into(),
            sha256: "ab".repeat(32),
            kind: "filter".into(),
            size_bytes: 1234,
            attached_to: vec!["orders".into()],
        }
    }

    #[test]
    fn plugin_requests_round_trip() {
        for request in [
            Request::PluginDeploy(PluginDeployRequest {
                name: "f".into(),
                version: "1".into(),
                module: Bytes::from_static(b"\0asm"),
            }),
            Request::PluginList,
            Request::PluginDescribe(PluginNameRequest { name: "f".into() }),
            Request::PluginRemove(PluginNameRequest { name: "f".into() }),
            Request::TopicAttach(TopicAttachRequest {
                topic: "t".into(),
                attachment: Attachment {
                    plugin: "f".into(),
                    params: vec![("where".into(), "a=1".into())],
                    batch_time_max_ms: 50,
                    memory_max_bytes: 1 << 20,
                    on_failure: "dead-letter:dlq".into(),
                },
            }),
            Request::TopicDetach(TopicDetachRequest {
                topic: "t".into(),
                plugin: "f".into(),
            }),
        ] {
            let frame = encode_request(&request);
            assert_eq!(decode_request(frame.slice(4..)).unwrap(), request);
            for cut in 4..frame.len() {
                let _ = decode_request(frame.slice(4..cut));
            }
        }
    }

    #[test]
    fn plugin_responses_round_trip() {
        let result = PluginResult {
            error: ErrorCode::PluginInUse,
            message: "attached to t".into(),
        };
        for response in [
            Response::PluginDeploy(PluginInfoResponse {
                error: ErrorCode::None,
                message: String::new(),
                plugin: Some(info()),
            }),
            Response::PluginDescribe(PluginInfoResponse {
                error: ErrorCode::PluginNotFound,
                message: "no".into(),
                plugin: None,
            }),
            Response::PluginList(PluginListResponse {
                plugins: vec![info(), info()],
            }),
            Response::PluginRemove(result.clone()),
            Response::TopicAttach(result.clone()),
            Response::TopicDetach(result),
        ] {
            let frame = encode_response(&response);
            let decoded = decode_response(response.api_key(), frame.slice(4..)).unwrap();
            assert_eq!(decoded, ResponseFrame::Ok(response.clone()));
            for cut in 4..frame.len() {
                let _ = decode_response(response.api_key(), frame.slice(4..cut));
            }
        }
    }
}
