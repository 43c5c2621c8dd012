//! An SSE stream read incrementally over a raw TCP socket, de-chunking as it goes, the
//! way a browser's EventSource sees it (including `Last-Event-ID` bookkeeping).

use serde_json::Value;
use std::net::SocketAddr;
use tokio::net::TcpStream;

use crate::WAIT;

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// An SSE stream read over a raw TCP socket, incrementally, de-chunking as it goes.
pub struct SseStream {
    pub status: u16,
    /// What a browser's EventSource would send as `Last-Event-ID` on reconnect: the last
    /// `id:` seen, including id-only blocks (which set it without dispatching an event).
    pub last_event_id: Option<String>,
    pub head: String,
    sock: TcpStream,
    raw: Vec<u8>,
    /// Bytes left in the current chunk (`None`: a size line comes next).
    chunk_left: Option<usize>,
    chunked: bool,
    body: Vec<u8>,
    pub eof: bool,
}

impl SseStream {
    /// `GET path` with headers; reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
        use tokio::io::AsyncWriteExt;
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut s = SseStream {
            status: 0,
            last_event_id: None,
            head: String::new(),
            sock,
            raw: Vec::new(),
            chunk_left: None,
            chunked: false,
            body: Vec::new(),
            eof: false,
        };
        loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                s.head = String::from_utf8_lossy(&s.raw[..i]).into_owned();
                s.raw.drain(..i + 4);
                break;
            }
            assert!(
                s.read_more().await,
                "connection closed before the response head"
            );
        }
        s.status = s
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        s.chunked = s
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        s.decode();
        s
    }

    async fn read_more(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.sock.read(&mut buf))
            .await
            .expect("SSE data in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Moves what `raw` holds into `body`, removing chunk framing.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            match self.chunk_left {
                Some(0) => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    self.raw.drain(..2); // CRLF after the chunk
                    self.chunk_left = None;
                }
                Some(n) => {
                    if self.raw.is_empty() {
                        return;
                    }
                    let k = n.min(self.raw.len());
                    self.body.extend(self.raw.drain(..k));
                    self.chunk_left = Some(n - k);
                }
                None => {
                    let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    self.raw.drain(..i + 2);
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .expect("chunk size");
                    if size == 0 {
                        self.eof = true;
                        return;
                    }
                    self.chunk_left = Some(size);
                }
            }
        }
    }

    /// The next block (an event or a comment, without its blank line); `None` at the end
    /// of the stream.
    pub async fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..i]).into_owned();
                self.body.drain(..i + 2);
                return Some(block);
            }
            if self.eof || !self.read_more().await {
                self.eof = true;
                return None;
            }
            self.decode();
        }
    }

    /// The next event, skipping comments; `None` at the end of the stream.
    /// The next event that is not a member event (`member_joined`, `member_left`,
    /// `member_count`): a member event of a user who joined just before this stream did
    /// may reach it, and says nothing about the messages a test follows.
    pub async fn next_non_member_event(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_event().await?;
            let kind = serde_json::from_str::<Value>(&ev.data)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_string));
            if !kind.is_some_and(|k| k.starts_with("member_")) {
                return Some(ev);
            }
        }
    }

    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.next_block().await?;
            let mut ev = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let v = v.strip_prefix(' ').unwrap_or(v);
                match k {
                    "id" => ev.id = Some(v.to_string()),
                    "event" => ev.event = Some(v.to_string()),
                    "data" => data.push(v.to_string()),
                    _ => {}
                }
            }
            if let Some(id) = &ev.id {
                self.last_event_id = Some(id.clone());
            }
            if data.is_empty() {
                continue; // a comment, or an id-only block: no event, as in browsers
            }
            ev.data = data.join("\n");
            // An id-only block already received right after the event (the node sends
            // them together) updates the last event id, as a browser would at once.
            while let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..i]).into_owned();
                let Some(id) = block
                    .strip_prefix("id: ")
                    .filter(|rest| !rest.contains('\n'))
                else {
                    break;
                };
                self.last_event_id = Some(id.to_string());
                self.body.drain(..i + 2);
            }
            return Some(ev);
        }
    }

    /// Reads until the stream ends; true when it does within [`WAIT`].
    pub async fn ended(&mut self) -> bool {
        while self.next_block().await.is_some() {}
        true
    }
}
