//! The scenarios as plans: one [`ConnSpec`] per connection, saying who it is, where it
//! connects, what it joins and whether (and how fast) it sends.
//!
//! | scenario | connections | sends |
//! |---|---|---|
//! | `idle` | N users, each joined to `chat:idle-{i / K}` and `notifications:{user}` | nothing: measures memory per connection and connect rate |
//! | `fanout` | N subscribers of `chat:fanout` plus one publisher | the publisher, at a fixed rate or as fast as its acknowledgements return |
//! | `chat` | M chats of K users (`chat:c{m}`) | every user, at a per-user rate or acknowledgement-paced |

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Idle joined connections.
    Idle,
    /// One publisher, N subscribers.
    Fanout,
    /// M chats of K users, everyone sending.
    Chat,
}

impl Scenario {
    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Chat => "chat",
        }
    }
}

/// How a sender paces its messages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// One message every `interval`.
    Rate {
        /// Time between two sends.
        interval: Duration,
    },
    /// As fast as acknowledgements allow: at most this many unacknowledged messages.
    Window(u32),
}

impl Pacing {
    /// `rate` messages per second, or acknowledgement-paced with `window` in flight when the
    /// rate is 0.
    pub fn from_rate(rate: f64, window: u32) -> Pacing {
        if rate > 0.0 {
            Pacing::Rate {
                interval: Duration::from_secs_f64(1.0 / rate),
            }
        } else {
            Pacing::Window(window.max(1))
        }
    }
}

/// What one connection sends.
#[derive(Clone, Debug, PartialEq)]
pub struct SendSpec {
    /// The joined topic it sends on.
    pub topic: String,
    /// Its pace.
    pub pacing: Pacing,
    /// How many others receive each of its messages (deliveries expected per send).
    pub fanout: u64,
    /// Delay of its first send after the start (spreads senders over an interval).
    pub phase: Duration,
}

/// One connection of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnSpec {
    /// The user id (the token's `sub`).
    pub user: String,
    /// Index of the endpoint it connects to.
    pub endpoint: usize,
    /// Topics joined, in order.
    pub topics: Vec<String>,
    /// What it sends, if anything.
    pub send: Option<SendSpec>,
}

/// `idle`: `n` connections; users `u{i}`, `users_per_chat` per chat.
pub fn idle_plan(n: usize, users_per_chat: usize, endpoints: usize) -> Vec<ConnSpec> {
    let per_chat = users_per_chat.max(1);
    (0..n)
        .map(|i| ConnSpec {
            user: format!("u{i}"),
            endpoint: i % endpoints.max(1),
            topics: vec![
                format!("chat:idle-{}", i / per_chat),
                format!("notifications:u{i}"),
            ],
            send: None,
        })
        .collect()
}

/// The topic of the fanout scenario.
pub const FANOUT_TOPIC: &str = "chat:fanout";

/// `fanout`: `subscribers` connections plus one publisher (the last spec, on endpoint 0).
pub fn fanout_plan(subscribers: usize, pacing: Pacing, endpoints: usize) -> Vec<ConnSpec> {
    let mut plan: Vec<ConnSpec> = (0..subscribers)
        .map(|i| ConnSpec {
            user: format!("s{i}"),
            endpoint: i % endpoints.max(1),
            topics: vec![FANOUT_TOPIC.to_owned()],
            send: None,
        })
        .collect();
    plan.push(ConnSpec {
        user: "publisher".to_owned(),
        endpoint: 0,
        topics: vec![FANOUT_TOPIC.to_owned()],
        send: Some(SendSpec {
            topic: FANOUT_TOPIC.to_owned(),
            pacing,
            fanout: subscribers as u64,
            phase: Duration::ZERO,
        }),
    });
    plan
}

/// `chat`: `chats` chats of `users` users each; every user sends with `pacing`, first sends
/// spread evenly over one interval so a fixed rate does not arrive in bursts.
pub fn chat_plan(chats: usize, users: usize, pacing: Pacing, endpoints: usize) -> Vec<ConnSpec> {
    let total = chats * users;
    let spread = match pacing {
        Pacing::Rate { interval } => interval,
        Pacing::Window(_) => Duration::ZERO,
    };
    (0..total)
        .map(|i| {
            let (chat, user) = (i / users.max(1), i % users.max(1));
            let topic = format!("chat:c{chat}");
            ConnSpec {
                user: format!("c{chat}-u{user}"),
                endpoint: i % endpoints.max(1),
                topics: vec![topic.clone()],
                send: Some(SendSpec {
                    topic,
                    pacing,
                    fanout: users.saturating_sub(1) as u64,
                    phase: spread.mul_f64(i as f64 / total.max(1) as f64),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_joins_a_chat_and_notifications() {
        let plan = idle_plan(25, 10, 2);
        assert_eq!(plan.len(), 25);
        assert_eq!(plan[0].topics, ["chat:idle-0", "notifications:u0"]);
        assert_eq!(plan[24].topics, ["chat:idle-2", "notifications:u24"]);
        assert_eq!(plan[3].endpoint, 1);
        assert!(plan.iter().all(|c| c.send.is_none()));
    }

    #[test]
    fn fanout_has_one_publisher() {
        let plan = fanout_plan(100, Pacing::from_rate(0.0, 4), 2);
        assert_eq!(plan.len(), 101);
        let senders: Vec<_> = plan.iter().filter_map(|c| c.send.as_ref()).collect();
        assert_eq!(senders.len(), 1);
        assert_eq!(senders[0].fanout, 100);
        assert_eq!(senders[0].pacing, Pacing::Window(4));
        assert!(plan.iter().all(|c| c.topics == [FANOUT_TOPIC]));
        assert_eq!(plan.iter().filter(|c| c.endpoint == 1).count(), 50);
    }

    #[test]
    fn chat_spreads_senders() {
        let plan = chat_plan(3, 4, Pacing::from_rate(2.0, 1), 1);
        assert_eq!(plan.len(), 12);
        assert_eq!(plan[5].topics, ["chat:c1"]);
        assert_eq!(plan[5].user, "c1-u1");
        let send = plan[6].send.as_ref().map(|s| (s.fanout, s.phase));
        assert_eq!(send, Some((3, Duration::from_millis(250))));
        assert_eq!(
            plan[0].send.as_ref().map(|s| s.pacing),
            Some(Pacing::Rate {
                interval: Duration::from_millis(500)
            })
        );
    }
}
