//! [`Router`]: which [`Channel`] serves which topic.
//!
//! Patterns are either an exact topic (`lobby`) or a prefix ending in `*` (`chat:*` matches
//! `chat:42` and `chat:` itself). The first registered match wins, as in a Phoenix socket's
//! `channel` declarations.
//!
//! Each route keeps its [`RouteMetrics`] (joins and joined channels, labelled with the
//! pattern as registered), resolved when it is registered so a join touches no lock.

use std::sync::Arc;

use plume_wire::Payload;

use crate::channel::{BoxFuture, Channel, Context, DynChannel, JoinError};
use crate::limit::IdBudgets;
use crate::metrics::{RouteMetrics, UNMATCHED_PREFIX, metrics};

/// What a route's join produces: the new instance and the reply response.
type JoinFuture<'a> = BoxFuture<'a, Result<(Box<dyn DynChannel>, Payload), JoinError>>;

/// A type-erased channel constructor for one route.
trait Route: Send + Sync {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        payload: Payload,
        ctx: &'a mut Context<'_>,
    ) -> JoinFuture<'a>;
}

struct ChannelRoute<C: Channel> {
    state: Arc<C::State>,
}

impl<C: Channel> Route for ChannelRoute<C> {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        payload: Payload,
        ctx: &'a mut Context<'_>,
    ) -> JoinFuture<'a> {
        Box::pin(async move {
            let (channel, reply) = C::join(&self.state, topic, payload, ctx).await?;
            Ok((Box::new(channel) as Box<dyn DynChannel>, reply))
        })
    }
}

enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Pattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// Topic patterns and the channels that serve them.
pub struct Router {
    routes: Vec<(Pattern, RouteMetrics, Box<dyn Route>)>,
    unmatched: RouteMetrics,
    /// The push budgets shared by the sockets of one identity (see [`IdBudgets`]): kept
    /// here because the router is what every socket of a server shares.
    id_budgets: Arc<IdBudgets>,
    /// Some route's channel reads the connect params ([`Channel::READS_CONNECT_PARAMS`]).
    keeps_params: bool,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            routes: Vec::new(),
            unmatched: metrics().route(UNMATCHED_PREFIX),
            id_budgets: Arc::new(IdBudgets::default()),
            keeps_params: false,
        }
    }
}

impl Router {
    /// A router with no routes (every join gets `unmatched topic`).
    pub fn new() -> Router {
        Router::default()
    }

    /// The per-identity push budgets of this server's sockets.
    pub fn id_budgets(&self) -> &Arc<IdBudgets> {
        &self.id_budgets
    }

    /// Serves topics matching `pattern` with channel `C`, whose instances share `state`.
    pub fn channel<C: Channel>(mut self, pattern: &str, state: Arc<C::State>) -> Router {
        self.routes.push((
            Pattern::parse(pattern),
            metrics().route(pattern),
            Box::new(ChannelRoute::<C> { state }),
        ));
        self.keeps_params |= C::READS_CONNECT_PARAMS;
        self
    }

    /// Whether sockets must keep their connect params after the connect hook (some route's
    /// channel reads them).
    pub fn keeps_connect_params(&self) -> bool {
        self.keeps_params
    }

    /// True when some route serves `topic`.
    pub fn has_route(&self, topic: &str) -> bool {
        self.routes.iter().any(|(p, _, _)| p.matches(topic))
    }

    /// The metrics of the route that serves `topic` (the `unmatched` ones when none does).
    pub(crate) fn metrics(&self, topic: &str) -> &RouteMetrics {
        self.routes
            .iter()
            .find(|(p, _, _)| p.matches(topic))
            .map_or(&self.unmatched, |(_, m, _)| m)
    }

    pub(crate) fn join<'a>(
        &'a self,
        topic: &'a str,
        payload: Payload,
        ctx: &'a mut Context<'_>,
    ) -> Option<JoinFuture<'a>> {
        let (_, _, route) = self.routes.iter().find(|(p, _, _)| p.matches(topic))?;
        Some(route.join(topic, payload, ctx))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::Pattern;

    #[test]
    fn prefix_and_exact_patterns() {
        let chat = Pattern::parse("chat:*");
        assert!(chat.matches("chat:1"));
        assert!(chat.matches("chat:"));
        assert!(!chat.matches("chats:1"));
        let lobby = Pattern::parse("lobby");
        assert!(lobby.matches("lobby"));
        assert!(!lobby.matches("lobby:1"));
    }
}
