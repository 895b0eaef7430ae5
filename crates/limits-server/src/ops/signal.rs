//! Shutdown signals: a future that resolves on SIGTERM or SIGINT.

use std::future::Future;

/// Resolves when the process is asked to stop. The handlers are installed
/// when this is called, not when it is first awaited, so that a signal
/// that arrives in between (right after start-up) is not lost, nor kills
/// the process without a graceful shutdown.
pub fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
