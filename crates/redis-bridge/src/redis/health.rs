//! Readiness: the bus is ready while it is not closed, its subscription is up and its
//! command connection answers (pinged every [`HEALTH_EVERY`] by the health task). A
//! change is told to the node once (`BusEvent::State`).

use super::conn::Conn;
use super::{OpError, Shared};
use crate::bus::{BusError, BusEvent};
use crate::common::lock;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the command connection is pinged (readiness, and reconnecting it early).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

impl Shared {
    /// Hands `event` to the node (nothing before `start`).
    pub(crate) fn deliver(&self, event: BusEvent) {
        if let Some(d) = self.delivery.get() {
            d.deliver(event);
        }
    }

    pub(super) fn set_cmd_up(&self, up: bool) {
        if self.cmd_up.swap(up, Ordering::AcqRel) != up {
            self.note_outage(up);
            self.report_state();
        }
    }

    pub(crate) fn set_sub_up(&self, up: bool) {
        if self.sub_up.swap(up, Ordering::AcqRel) != up {
            self.note_outage(up);
        }
        self.report_state();
    }

    /// Redis went away: the pool's connections from before are not handed out again.
    fn note_outage(&self, up: bool) {
        if let (false, super::Backend::Single { pool, .. }) = (up, &self.backend) {
            pool.manager().outage();
        }
    }

    pub(super) fn ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.sub_up.load(Ordering::Acquire)
            && self.cmd_up.load(Ordering::Acquire)
    }

    /// Emits `State` when readiness changed since it was last reported. The lock makes
    /// two tasks reporting at once agree on one sequence; `deliver` does not block.
    fn report_state(&self) {
        if self.delivery.get().is_none() {
            return;
        }
        if self.closed.load(Ordering::Acquire) {
            // Closed on purpose (the node is stopping): not an outage, so the node is not
            // told "down" (it would log a failure); `close` logs "redis bus closed" and
            // `is_ready` answers false from now on.
            return;
        }
        let mut reported = lock(&self.reported);
        let up = self.ready();
        if *reported != Some(up) {
            *reported = Some(up);
            tracing::info!(up, "redis bus state");
            self.deliver(BusEvent::State { up });
        }
    }

    /// PINGs the publish connection; on a cluster every primary (not every node: a dead
    /// replica costs no readiness).
    pub(crate) async fn ping(&self) -> Result<(), OpError> {
        let mut c = self.pub_conn().await?;
        if let Conn::Cluster(c) = &mut c {
            let primaries = redis::cluster_routing::RoutingInfo::MultiNode((
                redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
            ));
            c.route_command(redis::cmd("PING"), primaries).await?;
            return Ok(());
        }
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }

    /// Makes sure the publish connection works before the bus says it is up: after an
    /// outage its old socket is dead, and the first command on it fails (and makes the
    /// manager reconnect), so a failed ping is retried once.
    pub(crate) async fn warm_publisher(&self) -> Result<(), BusError> {
        let ping = || self.run("ping", self.ping());
        match ping().await {
            Ok(_) => Ok(()),
            Err(_) => ping().await.map(|_| ()),
        }
    }

    /// Pings the command connection every [`HEALTH_EVERY`].
    pub(super) async fn health(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let r = self.run("health ping", self.ping()).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "redis health ping failed");
            }
        }
        tracing::debug!("redis health task stopped");
    }
}
