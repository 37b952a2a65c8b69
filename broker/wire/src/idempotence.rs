//! `InitProducerId` (API key 18): a producer asks for a producer id and epoch, which it
//! then stamps on its batches with per-partition sequence numbers, so the broker can
//! drop retried duplicates and refuse gaps.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    /// Reserved for transactions; `None` for idempotent producers.
    pub transactional_id: Option<String>,
}

impl InitProducerIdRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.option(self.transactional_id.as_ref(), |w, s| w.string(s));
    }

    pub fn decode(r: &mut Reader) -> Result<InitProducerIdRequest, DecodeError> {
        Ok(InitProducerIdRequest {
            transactional_id: r.option(|r| r.string())?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdResponse {
    pub error: ErrorCode,
    pub message: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl InitProducerIdResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.i64(self.producer_id);
        w.i16(self.producer_epoch);
    }

    pub fn decode(r: &mut Reader) -> Result<InitProducerIdResponse, DecodeError> {
        Ok(InitProducerIdResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
            producer_id: r.i64()?,
            producer_epoch: r.i16()?,
        })
    }
}
