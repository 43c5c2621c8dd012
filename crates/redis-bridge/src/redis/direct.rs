//! Messages to a user (the send script: PUBLISH on the user's channel, with the
//! idempotency window) and disconnects (PUBLISH on the control channel).

use super::{envelope, OpError, Shared};
use crate::bus::{BusError, BusStats, SendRequest, SendResult};
use crate::common::check_disconnect_code;
use roomcast_protocol::{BusMessage, UserId};

/// Sends a direct message to every connection of `req.to`, cluster-wide.
pub(super) async fn send(shared: &Shared, req: SendRequest) -> Result<SendResult, BusError> {
    let r = async {
        let m = req.message;
        let payload = envelope::encode(
            &shared.cfg.node_id,
            BusMessage::Direct {
                to: req.to.clone(),
                from: m.from,
                event: m.event,
                data: m.data,
                ts: m.ts,
            },
        )?;
        let mut inv = shared.scripts.send.prepare_invoke();
        inv.key(shared.keys.user_channel(&req.to));
        if let Some(k) = &req.idempotency_key {
            inv.key(shared.keys.send_dedupe(&req.to, k));
        }
        inv.arg(payload).arg(Shared::ms(shared.cfg.dedupe_window));
        let dup: i64 = shared
            .run("send", async {
                let mut c = shared.pub_conn().await?;
                inv.invoke_async(&mut c).await.map_err(OpError::from)
            })
            .await?;
        Ok(SendResult {
            duplicate: dup == 1,
        })
    }
    .await;
    if r.is_err() {
        BusStats::incr(&shared.stats.publish_errors);
    }
    r
}

/// Ends every connection of `user` with `code`, cluster-wide.
pub(super) async fn disconnect(shared: &Shared, user: &UserId, code: u16) -> Result<(), BusError> {
    check_disconnect_code(code)?;
    let payload = envelope::encode(
        &shared.cfg.node_id,
        BusMessage::Disconnect {
            user: user.clone(),
            code,
        },
    )?;
    let channel = shared.keys.control_channel();
    shared
        .run("disconnect", async move {
            let mut c = shared.pub_conn().await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    Ok(())
}
