//! [`StreamReader`]: reads Redis Streams with a consumer group, for publishing from a data
//! pipeline (`--consume-stream`, docs/protocol.md "Publishing from a Redis Stream").
//!
//! One consumer group per cluster, one consumer per node (named by the node id), so each
//! entry goes to one node. An entry stays pending in the group until [`StreamReader::ack`]:
//! the caller acknowledges only what it has published. A node that dies leaves its pending
//! entries behind; another node takes them over with [`StreamReader::claim`] (XAUTOCLAIM)
//! once they have been idle for the configured time. [`StreamReader::dead_letter`] moves an
//! entry that can never be published to `<stream>:dead` and acknowledges it, so that it
//! cannot block the stream.
//!
//! The reader owns one multiplexed connection of its own (a blocking XREADGROUP holds it),
//! reconnected on the next call after an error. Every call is bounded in time and fails
//! with [`BusError::Unavailable`] when Redis cannot answer. Names of the keys it writes
//! (`<stream>:dead`) are made here: they derive from the operator's stream key, not from
//! the bus prefix.

use crate::bus::BusError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use std::time::Duration;

/// Entries read per stream and call.
const BATCH: usize = 100;
/// Entries kept in a dead-letter stream (approximately).
const DEAD_MAXLEN: usize = 10_000;

/// How a [`StreamReader`] reads.
#[derive(Debug, Clone)]
pub struct StreamReaderConfig {
    /// The stream keys.
    pub streams: Vec<String>,
    /// The consumer group (one per cluster).
    pub group: String,
    /// This consumer's name (the node id).
    pub consumer: String,
    /// How long a read waits for new entries.
    pub block: Duration,
    /// How long another consumer's entry must be pending before it is claimed.
    pub claim_idle: Duration,
    /// The bound of every other Redis call.
    pub op_timeout: Duration,
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The stream it was read from.
    pub stream: String,
    /// Its stream ID (`<ms>-<seq>`).
    pub id: String,
    /// Its fields, in order; `None` when the entry was deleted from the stream while
    /// pending (it can only be acknowledged).
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

impl StreamEntry {
    /// The value of `name`, if the entry has that field.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads, acknowledges, claims and dead-letters entries of a consumer group.
pub struct StreamReader {
    client: redis::Client,
    cfg: StreamReaderConfig,
    conn: Option<MultiplexedConnection>,
    groups_ready: bool,
    /// XAUTOCLAIM cursor per stream.
    cursors: Vec<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("stream {what}: {e}"))
}

impl StreamReader {
    /// A reader of `cfg.streams` on the Redis at `url`; connects on first use.
    pub fn new(url: &str, cfg: StreamReaderConfig) -> Result<Self, BusError> {
        if cfg.streams.is_empty() {
            return Err(BusError::Internal("no stream to read".into()));
        }
        if url.starts_with("rediss") && rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client =
            redis::Client::open(url).map_err(|e| BusError::Internal(format!("redis url: {e}")))?;
        Ok(StreamReader {
            cursors: vec!["0-0".to_string(); cfg.streams.len()],
            client,
            cfg,
            conn: None,
            groups_ready: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StreamReaderConfig {
        &self.cfg
    }

    async fn conn(&mut self) -> Result<MultiplexedConnection, BusError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let op = self.cfg.op_timeout;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op))
            // A blocking read holds the connection for up to `block`.
            .set_response_timeout(Some(op + self.cfg.block));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| unavailable("connect", e))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Runs one command; an error drops the connection so that the next call reconnects.
    async fn run(&mut self, what: &str, cmd: redis::Cmd) -> Result<Value, BusError> {
        let mut c = self.conn().await?;
        match cmd.query_async::<Value>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) || e.is_unrecoverable_error() {
                    self.conn = None;
                }
                if e.to_string().contains("NOGROUP") {
                    // The stream or its group was deleted: create them again.
                    self.groups_ready = false;
                }
                Err(unavailable(what, e))
            }
        }
    }

    /// Creates the group on every stream (and the stream if missing), reading from the
    /// stream's start; an existing group is kept as it is.
    async fn ensure_groups(&mut self) -> Result<(), BusError> {
        if self.groups_ready {
            return Ok(());
        }
        for s in self.cfg.streams.clone() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&s)
                .arg(&self.cfg.group)
                .arg("0")
                .arg("MKSTREAM");
            match self.run("XGROUP CREATE", cmd).await {
                Ok(_) => {}
                Err(BusError::Unavailable(e)) if e.contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        self.groups_ready = true;
        Ok(())
    }

    async fn read_group(&mut self, id: &str, block: bool) -> Result<Vec<StreamEntry>, BusError> {
        self.ensure_groups().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(BATCH);
        if block {
            cmd.arg("BLOCK")
                .arg(self.cfg.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.cfg.streams);
        for _ in &self.cfg.streams {
            cmd.arg(id);
        }
        let v = self.run("XREADGROUP", cmd).await?;
        parse_read(&v)
    }

    /// Entries delivered to this consumer and not acknowledged yet (after a restart with
    /// the same name, or after a failed publish), oldest first.
    pub async fn pending(&mut self) -> Result<Vec<StreamEntry>, BusError> {
        self.read_group("0", false).await
    }

    /// New entries, waiting up to the configured block time for some.
    pub async fn read_new(&mut self) -> Result<Vec<StreamEntry>, BusError> {
        self.read_group(">", true).await
    }

    /// Takes over entries other consumers have left pending for longer than the claim
    /// idle time (a dead node's); they become this consumer's pending entries.
    pub async fn claim(&mut self) -> Result<Vec<StreamEntry>, BusError> {
        self.ensure_groups().await?;
        let mut out = Vec::new();
        for i in 0..self.cfg.streams.len() {
            let stream = self.cfg.streams[i].clone();
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(self.cfg.claim_idle.as_millis() as u64)
                .arg(&self.cursors[i])
                .arg("COUNT")
                .arg(BATCH);
            let v = self.run("XAUTOCLAIM", cmd).await?;
            let (next, entries) = parse_autoclaim(&stream, &v)?;
            self.cursors[i] = next;
            out.extend(entries);
        }
        Ok(out)
    }

    /// Acknowledges an entry: it leaves the group's pending list for good.
    pub async fn ack(&mut self, entry: &StreamEntry) -> Result<(), BusError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&entry.stream).arg(&self.cfg.group).arg(&entry.id);
        self.run("XACK", cmd).await.map(drop)
    }

    /// Copies an entry that cannot be published to `<stream>:dead` (its fields, plus
    /// `source_id` and `error`), then acknowledges it.
    pub async fn dead_letter(&mut self, entry: &StreamEntry, error: &str) -> Result<(), BusError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(dead_letter_key(&entry.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_MAXLEN)
            .arg("*");
        if let Some(fields) = &entry.fields {
            for (k, v) in fields {
                if k != "source_id" && k != "error" {
                    cmd.arg(k).arg(v);
                }
            }
        }
        cmd.arg("source_id").arg(&entry.id).arg("error").arg(error);
        self.run("XADD dead letter", cmd).await?;
        self.ack(entry).await
    }
}

/// The stream that receives the entries of `stream` that could not be published.
pub fn dead_letter_key(stream: &str) -> String {
    format!("{stream}:dead")
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn bad(what: &str) -> BusError {
    BusError::Internal(format!("unexpected stream reply: {what}"))
}

/// `[[id, [field, value, ...] | nil], ...]` of one stream.
fn parse_entries(stream: &str, v: &Value) -> Result<Vec<StreamEntry>, BusError> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("entries")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(bad("entry"));
        };
        let id = pair.first().and_then(text).ok_or_else(|| bad("entry id"))?;
        let fields = match pair.get(1) {
            None | Some(Value::Nil) => None,
            Some(Value::Array(kv)) => Some(
                kv.chunks(2)
                    .filter_map(|c| match c {
                        [k, v] => Some((text(k)?, bytes(v)?)),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(Value::Map(kv)) => Some(
                kv.iter()
                    .filter_map(|(k, v)| Some((text(k)?, bytes(v)?)))
                    .collect(),
            ),
            Some(_) => return Err(bad("entry fields")),
        };
        out.push(StreamEntry {
            stream: stream.to_string(),
            id,
            fields,
        });
    }
    Ok(out)
}

/// An XREADGROUP reply: nil (timeout), or per stream its entries (RESP2 array or RESP3 map).
fn parse_read(v: &Value) -> Result<Vec<StreamEntry>, BusError> {
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Array(streams) => {
            for s in streams {
                let Value::Array(pair) = s else {
                    return Err(bad("stream"));
                };
                let name = pair
                    .first()
                    .and_then(text)
                    .ok_or_else(|| bad("stream key"))?;
                out.extend(parse_entries(&name, pair.get(1).unwrap_or(&Value::Nil))?);
            }
        }
        Value::Map(streams) => {
            for (k, entries) in streams {
                let name = text(k).ok_or_else(|| bad("stream key"))?;
                out.extend(parse_entries(&name, entries)?);
            }
        }
        _ => return Err(bad("read")),
    }
    Ok(out)
}

/// An XAUTOCLAIM reply: `[next cursor, entries, deleted ids]`.
fn parse_autoclaim(stream: &str, v: &Value) -> Result<(String, Vec<StreamEntry>), BusError> {
    let Value::Array(parts) = v else {
        return Err(bad("autoclaim"));
    };
    let next = parts.first().and_then(text).ok_or_else(|| bad("cursor"))?;
    let entries = parse_entries(stream, parts.get(1).unwrap_or(&Value::Nil))?;
    // Entries deleted from the stream while pending come back as nil fields in Redis 6.2
    // (the caller acknowledges them); Redis 7 drops them from the pending list itself.
    Ok((next, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_replies() {
        let read = Value::Array(vec![Value::Array(vec![
            b("s1"),
            Value::Array(vec![
                Value::Array(vec![
                    b("1-0"),
                    Value::Array(vec![b("room"), b("r"), b("data"), b("{}")]),
                ]),
                Value::Array(vec![b("2-0"), Value::Nil]),
            ]),
        ])]);
        let e = parse_read(&read).expect("read");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].stream, "s1");
        assert_eq!(e[0].field("room"), Some(&b"r"[..]));
        assert_eq!(e[1].fields, None);
        assert!(parse_read(&Value::Nil).expect("timeout").is_empty());
        assert!(parse_read(&Value::Int(3)).is_err());
        let claim = Value::Array(vec![
            b("0-0"),
            Value::Array(vec![Value::Array(vec![
                b("5-1"),
                Value::Array(vec![b("event"), b("e")]),
            ])]),
            Value::Array(vec![]),
        ]);
        let (next, e) = parse_autoclaim("s", &claim).expect("claim");
        assert_eq!(next, "0-0");
        assert_eq!(e[0].id, "5-1");
        assert_eq!(dead_letter_key("s"), "s:dead");
    }
}
