//! How a WebSocket session ends: the closing handshake of RFC 6455 section 7 (it answers
//! a client's Close, and after a Close of its own it reads on until the client's answer,
//! bounded), run while the connection core leaves its rooms and presence.

use super::session::{Session, State};
use crate::disconnect::Disconnect;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Why the session's loop ended, and so how the socket is closed.
pub(super) enum End {
    /// The node closes: send this Close frame, then read until the client answers.
    Close(Disconnect),
    /// The client sent a Close frame: send the answer tungstenite queued, then go.
    Answer,
    /// No closing handshake is possible (the socket is gone or failed, or the client
    /// missed two heartbeats): let go of the socket without a Close frame (the client,
    /// if still there, sees 1006).
    Abandon,
}

/// How long a closing connection is read after the node's Close frame, waiting for the
/// client's (docs/protocol.md section 4.3): so that neither the Close frame nor the frames
/// before it are lost to a TCP reset while the client is still sending.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What a read error means for the connection (RFC 6455 section 7.4.1): a frame that
/// breaks the framing rules closes with 1002, text that is not UTF-8 with 1007, a
/// message over the size cap with 1009; a lost socket is just gone.
pub(super) fn read_failed(e: WsError) -> End {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => End::Close(Disconnect::TOO_BIG),
        WsError::Utf8(_) => End::Close(Disconnect::INVALID_UTF8),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Abandon,
        WsError::Protocol(_) => End::Close(Disconnect::PROTOCOL_ERROR),
        _ => End::Abandon,
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Ends the connection: it leaves its rooms and presence at once (a kicked or stalled
    /// connection must not stay a member while its close handshake runs), and closes.
    pub(super) async fn finish(mut self, state: State, end: End) {
        let d = match &end {
            End::Close(d) => Some(d),
            _ => None,
        };
        self.conn.release(state.active(), d);
        let (conn, ws) = (&self.conn, &mut self.ws);
        tokio::join!(conn.leave_presence(state.active()), close(conn, ws, end));
    }
}

/// The closing handshake (RFC 6455 section 7), bounded by [`CLOSE_LINGER`].
async fn close<S>(
    conn: &crate::conn::Conn,
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    end: End,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match end {
        End::Abandon => {}
        // tungstenite queued the answer (echoing the client's code) when it read the
        // Close; flushing sends it (and reports the connection closed).
        End::Answer => {
            let _ = tokio::time::timeout(CLOSE_LINGER, ws.flush()).await;
        }
        End::Close(d) => {
            conn.count_close(&d);
            let frame = CloseFrame {
                code: CloseCode::from(d.code),
                reason: d.reason.into(),
            };
            // The Close waits behind what the socket has not taken yet: it may take as
            // long as the socket keeps taking bytes (the socket's own write timeout
            // ends a stall), so that a client that reads late still learns the code.
            let send_by = Instant::now() + conn.node.cfg.write_timeout() + CLOSE_LINGER;
            match tokio::time::timeout_at(send_by, ws.close(Some(frame))).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            let linger = Instant::now() + CLOSE_LINGER;
            // Read on, discarding, until the client's Close (or the end of the
            // socket, or the linger): closing now, with the client still sending,
            // would make the kernel reset the connection and lose what was sent.
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(linger, ws.next()).await {
                if let Message::Close(_) = msg {
                    break;
                }
            }
        }
    }
}
