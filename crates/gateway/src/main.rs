//! The `roomcast` binary: reads configuration, sets up logging, binds, and runs the
//! node until SIGTERM or SIGINT.
//!
//! A node that cannot start (bad configuration, a port in use, a Redis URL it cannot
//! use) prints one line, `roomcast: <why>`, on stderr and exits with status 2; it
//! never prints a backtrace for them, whatever `RUST_BACKTRACE` says.

use roomcast_gateway::config::{Config, LogFormat};
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The exit status of a node that could not start.
const EXIT_STARTUP: i32 = 2;

fn main() {
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    init_logging(&cfg);
    if let Err(e) = serve(cfg) {
        fail(&e);
    }
}

/// Prints why the node cannot run, as one line, and exits with status 2.
fn fail(why: &dyn std::fmt::Display) -> ! {
    // One line even when the cause spans several (an OS or parser message).
    let line = why.to_string().replace(['\n', '\r'], " ");
    eprintln!("roomcast: {}", line.trim_end());
    std::process::exit(EXIT_STARTUP);
}

/// Whether log lines may carry ANSI colour: only when they go to a terminal (logs are
/// written to stdout) and `NO_COLOR` is unset or empty.
fn colour(no_color: Option<std::ffi::OsString>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::env::var_os("NO_COLOR"),
        std::io::stdout().is_terminal(),
    );
    match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init(),
    }
}

/// Builds the runtime, binds and runs the node until a signal; an error is a node that
/// could not start.
fn serve(cfg: Config) -> Result<(), String> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        rt.worker_threads(cfg.worker_threads);
    }
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let listener = roomcast_gateway::socket::listen(cfg.listen, cfg.listen_backlog)
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
        // The handlers are installed here, before the node says it is ready: a SIGTERM
        // that follows the ready line at once drains the node instead of killing it.
        let signals = Signals::install().map_err(|e| format!("cannot handle signals: {e}"))?;
        let shutdown = CancellationToken::new();
        let node = roomcast_gateway::run(listener, cfg, shutdown.clone());
        tokio::pin!(node);
        // The first signal starts the drain; the node then runs to its stop.
        tokio::select! {
            r = &mut node => return r.map_err(|e| e.to_string()),
            _ = signals.wait() => {
                tracing::info!("shutdown signal received");
                shutdown.cancel();
            }
        }
        node.await.map_err(|e| e.to_string())
    })
}

/// SIGTERM and SIGINT, registered with the runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsString;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(None, true));
        assert!(colour(Some(OsString::new()), true));
        assert!(!colour(Some(OsString::from("1")), true));
        assert!(!colour(None, false));
        assert!(!colour(Some(OsString::from("0")), false));
    }
}
