//! A task that does one step every interval during an attack and keeps what each step found
//! (the server sampler and the prober both are one).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs a step every interval until [`Periodic::finish`]; a step answering `None` ends it early.
pub struct Periodic<T> {
    stop: CancellationToken,
    task: JoinHandle<Vec<T>>,
}

impl<T: Send + 'static> Periodic<T> {
    /// Starts stepping now, then every `every` (a late step delays the next rather than
    /// bunching them).
    pub fn start<F, Fut>(every: Duration, mut step: F) -> Periodic<T>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut found = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match step().await {
                    Some(item) => found.push(item),
                    None => break,
                }
            }
            found
        });
        Periodic { stop, task }
    }

    /// Stops after the step in progress and returns what every step found.
    pub async fn finish(self) -> Vec<T> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
