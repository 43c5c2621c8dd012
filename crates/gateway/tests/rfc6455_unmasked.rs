//! RFC 6455 5.1: a server must close the connection when a client frame is not masked.
//! The Autobahn cases that scripts/conformance runs cannot send one (their client always
//! masks), so this test speaks the protocol over a raw socket: a node without auth, a
//! handshake, the welcome, then an unmasked text frame; the node must answer with a Close
//! frame carrying 1002.

mod support;

use support::{TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads exactly `n` bytes.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut b))
        .await
        .expect("bytes in time")
        .expect("read");
    b
}

/// Reads one server frame: (opcode, payload). Server frames are never masked.
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let h = read_n(s, 2).await;
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let b = read_n(s, 2).await;
            u16::from_be_bytes([b[0], b[1]]) as usize
        }
        127 => {
            let b = read_n(s, 8).await;
            u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize
        }
        n => n as usize,
    };
    (h[0] & 0x0f, read_n(s, len).await)
}

async fn upgraded(node: &TestNode) -> TcpStream {
    let mut s = TcpStream::connect(node.addr).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.extend(read_n(&mut s, 1).await);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let (op, welcome) = read_frame(&mut s).await;
    assert_eq!(op, 1, "the welcome is a text frame");
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    s
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let node = TestNode::open().await;
    // Control: the same ping, masked, is answered with a pong.
    let mut s = upgraded(&node).await;
    let payload = br#"{"type":"ping","id":"p"}"#;
    let key = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    s.write_all(&frame).await.expect("write");
    let (op, reply) = read_frame(&mut s).await;
    assert_eq!(op, 1);
    assert!(
        String::from_utf8_lossy(&reply).contains("pong"),
        "{reply:?}"
    );

    // Unmasked: a Close frame with 1002.
    let mut s = upgraded(&node).await;
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    s.write_all(&frame).await.expect("write");
    loop {
        let (op, body) = read_frame(&mut s).await;
        if op == 8 {
            assert!(body.len() >= 2, "the Close carries a code");
            assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1002);
            break;
        }
        assert_ne!(op, 1, "no reply to an unmasked frame: {body:?}");
    }
    node.stop().await;
}
