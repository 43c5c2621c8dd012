//! The one owner of a node's tasks and of how it stops.
//!
//! A node lives in three phases. It **serves** until the shutdown token given to
//! [`crate::run`] is cancelled; it then **drains** (readiness answers 503, upgrades are
//! refused, every client gets close 1001, sessions have `--drain-timeout` to end, the
//! background tasks are told to stop); once the drain is over it **stops** (the listener
//! closes, idle HTTP connections are shut down, the background tasks are waited for, the
//! bus closes). docs/operations.md describes the drain as an operator sees it.
//!
//! Every task a node starts is spawned here, on one of three trackers, so that nothing
//! outlives the node unseen:
//! - [`Lifecycle::spawn`]: background tasks (heartbeat, heap trimmer, JWKS refresher,
//!   stream consumer, hook connections, the hub's helpers); each is given, or takes with
//!   [`Lifecycle::draining`], the signal that the drain started, and ends on it;
//! - [`Lifecycle::spawn_session`]: client sessions (WebSocket and SSE), which end with
//!   close 1001 during the drain and are waited for up to `--drain-timeout`;
//! - [`Lifecycle::spawn_connection`]: accepted HTTP connections, shut down gracefully once
//!   the drain is over.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A node's phases and tasks. Cheap to clone: every clone is the same lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Cancelled when the drain starts (the shutdown token given to [`crate::run`]).
    draining: CancellationToken,
    /// Cancelled when the drain is over: serving stops.
    stopped: CancellationToken,
    tasks: TaskTracker,
    sessions: TaskTracker,
    connections: TaskTracker,
}

/// What was still running when a wait gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left(pub usize);

impl Lifecycle {
    /// A lifecycle whose drain starts when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Lifecycle {
            draining: shutdown,
            stopped: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: TaskTracker::new(),
            connections: TaskTracker::new(),
        }
    }

    /// Whether the drain has started: readiness fails and new clients are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// A token cancelled when the drain starts: a background task stops on it.
    pub fn draining(&self) -> CancellationToken {
        self.draining.child_token()
    }

    /// Waits until the drain starts.
    pub async fn drain_started(&self) {
        self.draining.cancelled().await
    }

    /// Waits until the drain is over (every session ended, or the deadline passed).
    pub async fn drain_over(&self) {
        self.stopped.cancelled().await
    }

    /// Runs `task` as a background task of the node, named `name` in the log line that
    /// says it ended. It must end on [`Lifecycle::draining`] (or sooner).
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(async move {
            task.await;
            tracing::debug!(task = name, "task ended");
        })
    }

    /// Runs `task` until it ends or the drain starts, whichever comes first (for futures
    /// that do not watch the drain themselves, such as a pooled client connection).
    pub fn spawn_until_drain<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let stop = self.draining();
        self.spawn(name, async move {
            tokio::select! {
                _ = task => {}
                _ = stop.cancelled() => {}
            }
        })
    }

    /// Runs a client session (WebSocket or SSE); the drain waits for it.
    pub fn spawn_session<F>(&self, session: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.sessions.spawn(session)
    }

    /// Runs an accepted HTTP connection; `serve` gets a token cancelled when the drain is
    /// over, on which it shuts down gracefully.
    pub fn spawn_connection<F, Fut>(&self, serve: F) -> JoinHandle<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.connections.spawn(serve(self.stopped.child_token()))
    }

    /// The drain's wait: no new session may start, and the ones there are get `deadline`
    /// to end. Then the drain is over. `Err` says how many were left.
    pub async fn wait_sessions(&self, deadline: Duration) -> Result<(), Left> {
        self.sessions.close();
        let r = tokio::time::timeout(deadline, self.sessions.wait()).await;
        self.stopped.cancel();
        r.map_err(|_| Left(self.sessions.len()))
    }

    /// After the drain: waits up to `deadline` for the HTTP connections to shut down.
    pub async fn wait_connections(&self, deadline: Duration) -> Result<(), Left> {
        self.connections.close();
        tokio::time::timeout(deadline, self.connections.wait())
            .await
            .map_err(|_| Left(self.connections.len()))
    }

    /// After the drain: waits up to `deadline` for the background tasks to end.
    pub async fn wait_tasks(&self, deadline: Duration) -> Result<(), Left> {
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .map_err(|_| Left(self.tasks.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_end_on_the_drain_and_are_waited_for() {
        let shutdown = CancellationToken::new();
        let life = Lifecycle::new(shutdown.clone());
        let stop = life.draining();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        life.spawn("waits", async move {
            stop.cancelled().await;
            let _ = tx.send(());
        });
        life.spawn_until_drain("forever", std::future::pending::<()>());
        assert!(!life.is_draining());
        shutdown.cancel();
        assert!(life.is_draining());
        life.drain_started().await;
        assert_eq!(life.wait_tasks(Duration::from_secs(30)).await, Ok(()));
        assert!(rx.await.is_ok(), "the task saw the drain");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_over_when_sessions_end_or_the_deadline_passes() {
        let life = Lifecycle::new(CancellationToken::new());
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        life.spawn_session(async move {
            let _ = ended.await;
        });
        life.spawn_session(std::future::pending::<()>());
        let r = life.wait_sessions(Duration::from_secs(5)).await;
        assert_eq!(r, Err(Left(2)), "both still running at the deadline");
        life.drain_over().await;
        drop(end);
        let conn = life.spawn_connection(|stop| async move { stop.cancelled().await });
        assert_eq!(life.wait_connections(Duration::from_secs(5)).await, Ok(()));
        assert!(conn.await.is_ok());
    }
}
