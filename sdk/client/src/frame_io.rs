//! Reading frame bodies off QUIC streams, shared by the client and the broker.

use bytes::{Bytes, BytesMut};

/// Why a frame body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// The peer finished the stream after this many body bytes.
    FinishedEarly(usize),
    /// The stream was reset or the connection lost.
    Read(quinn::ReadError),
}

/// Reads the `length` bytes of a frame body.
///
/// The chunks are kept as quinn hands them over and joined once at the end: one
/// allocation of the exact size and one copy, or none at all when the body came in
/// one chunk. Nothing is allocated ahead of the bytes arriving, so a peer that
/// announces a large frame and never sends it costs nothing; and the body is never
/// zero-filled first nor copied again as a growing buffer doubles.
pub async fn read_body(recv: &mut quinn::RecvStream, length: usize) -> Result<Bytes, BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0;
    while received < length {
        match recv.read_chunk(length - received, true).await {
            Ok(Some(chunk)) => {
                received += chunk.bytes.len();
                chunks.push(chunk.bytes);
            }
            Ok(None) => return Err(BodyError::FinishedEarly(received)),
            Err(e) => return Err(BodyError::Read(e)),
        }
    }
    Ok(join(chunks, length))
}

fn join(mut chunks: Vec<Bytes>, length: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut body = BytesMut::with_capacity(length);
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_join_in_order_and_one_chunk_is_not_copied() {
        let one = Bytes::from_static(b"whole");
        let joined = join(vec![one.clone()], 5);
        assert_eq!(joined.as_ptr(), one.as_ptr());
        let parts = ["ab", "", "cde", "f"].map(|p| Bytes::from_static(p.as_bytes()));
        assert_eq!(join(parts.to_vec(), 6), Bytes::from_static(b"abcdef"));
        assert!(join(Vec::new(), 0).is_empty());
    }
}
