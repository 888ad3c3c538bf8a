//! The rooms list: the chats a user is a member of, most recent activity first, each with its
//! last message, the user's unread count, and how many members it has and how many of them
//! are online. Sent in the `notifications:{user_id}` join reply, paged further by
//! `list_rooms`, pushed one room at a time as `room_updated`, and served by
//! `GET /api/users/{id}/rooms`.
//!
//! A room's activity is the time of its newest kept message, or when the user was added if
//! that is later (a chat just joined comes first even without messages). Rooms of equal
//! activity are ordered by chat id. The list is computed when asked, from the stores' own
//! state (memberships, the log's newest entries, read positions, presence): nothing is kept
//! per user on the send path, so a message costs the same whatever the number of rooms
//! lists that show it. Asking costs a handful of store round trips, whatever the number of
//! rooms (each store answers a list of chats in one).
//!
//! A page ends with a `next` cursor: an opaque string naming the last room's position,
//! which the next `list_rooms` or API call passes back as `before`. A cursor is checked
//! strictly; one the server could not have issued is refused (`invalid_cursor`).

use serde::Serialize;

use crate::events::{NOTIFICATION_ALIAS_PREFIX, NOTIFICATIONS_PREFIX, ROOM_UPDATED};
use crate::state::ChatState;
use crate::store::{LoggedMessage, StoreError};
use crate::time::format_millis;

/// Rooms in the join reply, and the most a page may hold.
pub const ROOMS_PAGE: usize = 50;

/// The cursor format's version prefix.
const CURSOR_PREFIX: &str = "r1.";

/// One room as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    /// The chat.
    pub chat_id: String,
    /// Its newest kept message (`null` when none, or when the user is not a member).
    pub last_message: Option<RoomMessage>,
    /// Messages after the user's read position not sent by them.
    pub unread_count: u64,
    /// How many members the chat has.
    pub members_count: usize,
    /// How many of them are online (have a socket in the chat or a notifications topic
    /// joined); `null` for a chat over the configured size, where counting costs too much.
    pub online_count: Option<usize>,
    /// Whether the user is a member (always true in a list; false in the `room_updated` that
    /// tells them they were removed).
    pub member: bool,
}

/// A room's last message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomMessage {
    /// The message id.
    pub message_id: String,
    /// Its seq in the chat.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: String,
    /// The text.
    pub content: String,
    /// When it was sent (RFC 3339, UTC).
    pub timestamp: String,
}

impl From<LoggedMessage> for RoomMessage {
    fn from(m: LoggedMessage) -> RoomMessage {
        RoomMessage {
            timestamp: format_millis(m.ts_ms),
            message_id: m.message_id,
            seq: m.seq,
            sender_id: m.sender_id,
            content: m.content,
        }
    }
}

/// A page of rooms and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomsPage {
    /// The rooms, most recent activity first.
    pub rooms: Vec<Room>,
    /// Pass as `before` for the next page.
    pub next: Option<String>,
}

/// A position in a user's rooms list: after the room with this activity and chat id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    activity: i64,
    chat_id: String,
}

impl Cursor {
    /// `r1.` + the activity in hex + `.` + the chat id in hex.
    pub fn encode(&self) -> String {
        let mut out = format!("{CURSOR_PREFIX}{:x}.", self.activity);
        for b in self.chat_id.as_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Parses a cursor [`Cursor::encode`] made; `None` for anything else (including a chat id
    /// longer than `max_id_bytes`, which no chat can have).
    pub fn decode(text: &str, max_id_bytes: usize) -> Option<Cursor> {
        let rest = text.strip_prefix(CURSOR_PREFIX)?;
        let (activity, chat) = rest.split_once('.')?;
        if activity.is_empty()
            || activity.len() > 16
            || !activity.bytes().all(|b| b.is_ascii_hexdigit())
            || chat.is_empty()
            || chat.len() % 2 != 0
            || chat.len() / 2 > max_id_bytes
        {
            return None;
        }
        let activity = i64::try_from(u64::from_str_radix(activity, 16).ok()?).ok()?;
        let bytes = (0..chat.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(chat.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let chat_id = String::from_utf8(bytes).ok()?;
        Some(Cursor { activity, chat_id })
    }

    /// Whether a room at (`activity`, `chat_id`) comes after this position.
    fn precedes(&self, activity: i64, chat_id: &str) -> bool {
        activity < self.activity || (activity == self.activity && chat_id > self.chat_id.as_str())
    }
}

/// A room before its per-page details are read.
struct Ranked {
    chat_id: String,
    activity: i64,
    last: Option<LoggedMessage>,
}

impl ChatState {
    /// A page of at most `limit` of `user`'s rooms after `before` (from the first when
    /// `None`). `viewer_online`: the user is asking from a socket, so counts as online in
    /// every room even before their presence is recorded (their notifications join).
    pub async fn rooms_page(
        &self,
        user: &str,
        before: Option<&Cursor>,
        limit: usize,
        viewer_online: bool,
    ) -> Result<RoomsPage, StoreError> {
        let stores = &self.stores;
        let chats = stores.membership.chats_of(user).await?;
        let ids: Vec<String> = chats.iter().map(|c| c.chat_id.clone()).collect();
        let latest = stores.log.latest(&ids).await?;
        let mut ranked: Vec<Ranked> = chats
            .into_iter()
            .zip(latest)
            .map(|(chat, last)| Ranked {
                activity: last.as_ref().map_or(0, |m| m.ts_ms).max(chat.added_ms),
                chat_id: chat.chat_id,
                last,
            })
            .filter(|r| before.is_none_or(|c| c.precedes(r.activity, &r.chat_id)))
            .collect();
        ranked.sort_unstable_by(|a, b| {
            b.activity
                .cmp(&a.activity)
                .then_with(|| a.chat_id.cmp(&b.chat_id))
        });
        let more = ranked.len() > limit;
        ranked.truncate(limit);
        let next = more
            .then(|| ranked.last())
            .flatten()
            .map(|r| Cursor {
                activity: r.activity,
                chat_id: r.chat_id.clone(),
            })
            .map(|c| c.encode());
        let rooms = self.detail(user, ranked, true, viewer_online).await?;
        Ok(RoomsPage { rooms, next })
    }

    /// `user`'s view of one chat, as `room_updated` carries it.
    pub async fn room(&self, user: &str, chat: &str) -> Result<Room, StoreError> {
        let stores = &self.stores;
        let member = stores.membership.is_member(chat, user).await?;
        let chat_ids = [chat.to_owned()];
        let last = if member {
            stores.log.latest(&chat_ids).await?.pop().flatten()
        } else {
            None
        };
        let ranked = vec![Ranked {
            chat_id: chat.to_owned(),
            activity: 0,
            last,
        }];
        let mut rooms = self.detail(user, ranked, member, false).await?;
        Ok(rooms.remove(0))
    }

    /// Reads unread counts, member counts and online counts for `ranked`, in order.
    async fn detail(
        &self,
        user: &str,
        ranked: Vec<Ranked>,
        member: bool,
        viewer_online: bool,
    ) -> Result<Vec<Room>, StoreError> {
        let stores = &self.stores;
        let ids: Vec<String> = ranked.iter().map(|r| r.chat_id.clone()).collect();
        let unread = if member {
            let reads = stores.reads.read_positions(user, &ids).await?;
            let positions: Vec<(String, u64)> = ids.iter().cloned().zip(reads).collect();
            stores.log.count_unread_many(&positions, user).await?
        } else {
            vec![0; ids.len()]
        };
        let counts = stores.membership.count_members(&ids).await?;
        let mut rooms = Vec::with_capacity(ranked.len());
        for ((r, unread_count), members_count) in ranked.into_iter().zip(unread).zip(counts) {
            let online_count = if members_count <= self.config.online_fanout_max_members {
                let members = stores.membership.members(&r.chat_id).await?;
                let located = stores.presence.locate(&members, Some(&r.chat_id)).await?;
                Some(
                    members
                        .iter()
                        .zip(&located)
                        .filter(|(m, w)| {
                            w.in_chat || w.notifications || (viewer_online && m.as_str() == user)
                        })
                        .count(),
                )
            } else {
                None
            };
            rooms.push(Room {
                chat_id: r.chat_id,
                last_message: r.last.map(RoomMessage::from),
                unread_count,
                members_count,
                online_count,
                member,
            });
        }
        Ok(rooms)
    }

    /// Pushes `room_updated` with `user`'s view of `chat` to their notifications topic (both
    /// spellings), in the background: it is a courtesy to their other screens, so nothing
    /// waits on it and a failure is only logged.
    pub fn spawn_room_updated(self: &std::sync::Arc<Self>, user: &str, chat: &str) {
        let (state, user, chat) = (self.clone(), user.to_owned(), chat.to_owned());
        tokio::spawn(async move {
            let room = match state.room(&user, &chat).await {
                Ok(room) => room,
                Err(err) => {
                    tracing::warn!(%user, %chat, %err, "room_updated not sent: store unavailable");
                    return;
                }
            };
            let payload = match plume_wire::Payload::json(&room) {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(%err, "room_updated not encoded");
                    return;
                }
            };
            for prefix in [NOTIFICATIONS_PREFIX, NOTIFICATION_ALIAS_PREFIX] {
                let sent = state.pubsub.broadcast(plume_channels::Broadcast {
                    topic: format!("{prefix}{user}").into(),
                    event: ROOM_UPDATED.into(),
                    payload: payload.clone(),
                    from: None,
                    seq: None,
                });
                if let Err(err) = sent {
                    tracing::debug!(%user, %err, "room_updated not fanned out to other nodes");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_round_trips_and_anything_else_is_refused() {
        let c = Cursor {
            activity: 1_700_000_000_123,
            chat_id: "room/é 1".into(),
        };
        let text = c.encode();
        assert_eq!(Cursor::decode(&text, 128), Some(c.clone()));
        for bad in [
            "",
            "r1.",
            "r1.1.",
            "r2.1.61",
            "r1.zz.61",
            "r1.1.6",
            "r1.1.6g",
            "r1.1.ff",
            "r1.11111111111111111.61",
            "r1.8000000000000000.61",
            "hello",
        ] {
            assert_eq!(Cursor::decode(bad, 128), None, "{bad:?}");
        }
        assert_eq!(Cursor::decode(&text, 3), None, "a chat id over the limit");
    }

    #[test]
    fn a_cursor_orders_by_activity_then_chat_id() {
        let c = Cursor {
            activity: 10,
            chat_id: "b".into(),
        };
        assert!(c.precedes(9, "a"));
        assert!(c.precedes(10, "c"));
        assert!(!c.precedes(10, "b"));
        assert!(!c.precedes(10, "a"));
        assert!(!c.precedes(11, "z"));
    }
}
