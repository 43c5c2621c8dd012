//! Where the bus's commands go: one Redis (a multiplexed publish connection and a pool
//! for everything else) or a Redis Cluster (the redis crate's `ClusterConnection`, which
//! keeps a multiplexed connection per node, routes every command by its first key's slot
//! and follows MOVED and ASK itself). [`Conn`] is either, so the rest of the bus builds
//! commands once and runs them on whichever it has.

use super::pool::Pooled;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A command connection of either kind. Cheap to clone (every kind is multiplexed);
/// clones pipeline their commands on the same sockets.
pub(crate) enum Conn {
    /// From the pool of one Redis (back in the pool when dropped).
    Pooled(Pooled),
    /// A clone of a pooled connection.
    Multiplexed(MultiplexedConnection),
    /// The publish connection of one Redis.
    Manager(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Clone for Conn {
    fn clone(&self) -> Self {
        match self {
            Conn::Pooled(c) => Conn::Multiplexed(MultiplexedConnection::clone(c)),
            Conn::Multiplexed(c) => Conn::Multiplexed(c.clone()),
            Conn::Manager(c) => Conn::Manager(c.clone()),
            Conn::Cluster(c) => Conn::Cluster(c.clone()),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Pooled(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Pooled(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
