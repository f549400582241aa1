//! `GET /api/session-keys/events`: a Server-Sent Events stream of the signed-in owner's
//! changes (the UI's live updates). Events: `ready` once, then `key` (a key's new view) and
//! `tabs` (the owner's tabs, as `GET /api/tabs`) as they change; `resync` when the stream fell behind or a
//! read failed, telling the client to refetch everything.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use opentab_core::Address;
use tokio::sync::broadcast::error::RecvError;

use super::auth::SignedIn;
use super::keys::{TabsView, view};
use super::{AppState, now};
use crate::Change;

#[utoipa::path(get, path = "/api/session-keys/events", tag = "session-keys", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, content_type = "text/event-stream", description = "events: ready, key, tabs, resync"),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn events(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::ApiError> {
    let rx = state
        .notifier
        .subscribe(owner)
        .map_err(|err| super::ApiError::too_many("too_many_streams", err.to_string()))?;
    let ready = futures_util::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let changes = futures_util::stream::unfold((rx, state, owner), |(mut rx, state, owner)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(change) if change.owner == owner => render(&state, owner, change).await,
                // Only this owner's changes reach its channel; skip anything else all the same.
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event stream fell behind; asking the client to resync");
                    resync()
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, state, owner)));
        }
    });
    Ok(Sse::new(futures_util::StreamExt::chain(ready, changes)).keep_alive(KeepAlive::default()))
}

async fn render(state: &AppState, owner: Address, change: Change) -> Event {
    let event = match change.key {
        Some(key) => match state.store.key(key).await {
            Ok(Some(record)) if record.key.owner == owner => match view(state, &record, now()).await {
                Ok(key) => Event::default().event("key").json_data(key),
                Err(_) => return resync(),
            },
            _ => return resync(),
        },
        None => match TabsView::load(state, owner).await {
            Ok(tabs) => Event::default().event("tabs").json_data(tabs),
            Err(_) => return resync(),
        },
    };
    event.unwrap_or_else(|_| resync())
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}
