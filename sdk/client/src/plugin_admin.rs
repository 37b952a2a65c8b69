//! Plugin administration: deploy, list, describe and remove WebAssembly plugins, and
//! attach them to (or detach them from) a topic's produce path.

use bytes::Bytes;
use meridian_wire::messages::{ApiKey, Request, Response};
pub use meridian_wire::plugin_messages::{Attachment, PluginInfo};
use meridian_wire::plugin_messages::{
    PluginDeployRequest, PluginInfoResponse, PluginNameRequest, PluginResult, TopicAttachRequest,
    TopicDetachRequest,
};

use crate::admin::Admin;
use crate::client::unexpected;
use crate::error::{Error, Result};

fn info(response: PluginInfoResponse) -> Result<PluginInfo> {
    if !response.error.is_ok() {
        return Err(Error::broker(response.error, response.message));
    }
    response
        .plugin
        .ok_or_else(|| Error::Protocol("plugin response without a plugin".into()))
}

fn ok(result: PluginResult) -> Result<()> {
    if result.error.is_ok() {
        Ok(())
    } else {
        Err(Error::broker(result.error, result.message))
    }
}

impl Admin {
    /// Uploads a module (validated by the broker: ABI version, exports, size). Deploying
    /// an existing name replaces its module; attachments switch at their next batch.
    pub async fn deploy_plugin(
        &self,
        name: &str,
        version: &str,
        module: Bytes,
    ) -> Result<PluginInfo> {
        let request = Request::PluginDeploy(PluginDeployRequest {
            name: name.to_string(),
            version: version.to_string(),
            module,
        });
        let info = match self.client.request(request).await? {
            Response::PluginDeploy(r) => info(r)?,
            other => return Err(unexpected(ApiKey::PluginDeploy, &other)),
        };
        self.plugins_everywhere(name, |plugins| {
            plugins
                .iter()
                .any(|p| p.name == info.name && p.sha256 == info.sha256)
        })
        .await;
        Ok(info)
    }

    /// In a cluster, plugins are metadata every broker follows: waits (as topic
    /// changes do) until every broker the metadata names lists the plugins as `seen`
    /// wants, so that records produced right after meet the change on every leader.
    async fn plugins_everywhere(&self, what: &str, seen: impl Fn(&[PluginInfo]) -> bool + Sync) {
        let seen = &seen;
        self.await_brokers(what, |broker, timeout| async move {
            match self
                .client
                .request_to_with_timeout(broker, Request::PluginList, timeout)
                .await?
            {
                Response::PluginList(r) => Ok(seen(&r.plugins)),
                other => Err(unexpected(ApiKey::PluginList, &other)),
            }
        })
        .await
    }

    /// Whether `plugins` show `name` attached to `topic`.
    fn attached(plugins: &[PluginInfo], name: &str, topic: &str) -> bool {
        plugins
            .iter()
            .any(|p| p.name == name && p.attached_to.iter().any(|t| t == topic))
    }

    /// Every deployed plugin, by name.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        match self.client.request(Request::PluginList).await? {
            Response::PluginList(r) => Ok(r.plugins),
            other => Err(unexpected(ApiKey::PluginList, &other)),
        }
    }

    pub async fn describe_plugin(&self, name: &str) -> Result<PluginInfo> {
        let request = Request::PluginDescribe(PluginNameRequest {
            name: name.to_string(),
        });
        match self.client.request(request).await? {
            Response::PluginDescribe(r) => info(r),
            other => Err(unexpected(ApiKey::PluginDescribe, &other)),
        }
    }

    /// Removes a plugin no topic uses ([`crate::ErrorCode::PluginInUse`] otherwise).
    pub async fn remove_plugin(&self, name: &str) -> Result<()> {
        let request = Request::PluginRemove(PluginNameRequest {
            name: name.to_string(),
        });
        match self.client.request(request).await? {
            Response::PluginRemove(r) => ok(r)?,
            other => return Err(unexpected(ApiKey::PluginRemove, &other)),
        }
        self.plugins_everywhere(name, |plugins| plugins.iter().all(|p| p.name != name))
            .await;
        Ok(())
    }

    /// Appends a plugin to a topic's produce chain (or updates its attachment).
    pub async fn attach_plugin(&self, topic: &str, attachment: Attachment) -> Result<()> {
        let name = attachment.plugin.clone();
        let request = Request::TopicAttach(TopicAttachRequest {
            topic: topic.to_string(),
            attachment,
        });
        match self.client.request(request).await? {
            Response::TopicAttach(r) => ok(r)?,
            other => return Err(unexpected(ApiKey::TopicAttach, &other)),
        }
        self.plugins_everywhere(&name, |plugins| Self::attached(plugins, &name, topic))
            .await;
        Ok(())
    }

    pub async fn detach_plugin(&self, topic: &str, plugin: &str) -> Result<()> {
        let request = Request::TopicDetach(TopicDetachRequest {
            topic: topic.to_string(),
            plugin: plugin.to_string(),
        });
        match self.client.request(request).await? {
            Response::TopicDetach(r) => ok(r)?,
            other => return Err(unexpected(ApiKey::TopicDetach, &other)),
        }
        self.plugins_everywhere(plugin, |plugins| !Self::attached(plugins, plugin, topic))
            .await;
        Ok(())
    }
}
