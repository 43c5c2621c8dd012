//! A model-based test of the hub: random joins, leaves and publishes against a plain
//! map of who is where; every member of a room gets each message once, in order, and
//! nobody else gets it.

use super::*;
use crate::metrics::Metrics;
use proptest::prelude::*;
use roomcast_protocol::{EventName, Publication, RoomName, UserId};
use roomcast_redis_bridge::{BusEvent, EventSink, RoomInterest};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize),
    Leave(usize, usize),
    Publish(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize, 0..3usize).prop_map(|(c, r)| Op::Join(c, r)),
        (0..6usize, 0..3usize).prop_map(|(c, r)| Op::Leave(c, r)),
        (0..3usize, any::<bool>()).prop_map(|(r, skip)| Op::Publish(r, skip)),
    ]
}

fn room(i: usize) -> RoomName {
    RoomName::new(&format!("r{i}")).expect("valid room")
}

fn drain(m: &Mailbox) -> Vec<Outbound> {
    m.queued()
}

proptest! {
    #[test]
    fn fanout_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let hub = Hub::new(Arc::new(Metrics::new()), RoomInterest::detached(), test_lifecycle());
        let members: Vec<Member> = (0..6)
            .map(|i| Member {
                id: Arc::from(format!("c{i}")),
                user: UserId::new(&format!("u{}", i % 4)).expect("valid user"),
                wire: if i % 2 == 0 { Wire::Json } else { Wire::MsgPack },
                mailbox: Mailbox::new(1000),
            })
            .collect();
        let mut model: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut expected: Vec<Vec<u64>> = vec![Vec::new(); 6];
        let mut offset = 0u64;
        for op in ops {
            match op {
                Op::Join(c, r) => {
                    hub.join(&room(r), &members[c]);
                    model.entry(r).or_default().insert(c);
                }
                Op::Leave(c, r) => {
                    hub.leave(&room(r), &members[c].id);
                    model.entry(r).or_default().remove(&c);
                }
                Op::Publish(r, skip_first) => {
                    offset += 1;
                    let skip = if skip_first { model.get(&r).and_then(|s| s.iter().next().copied()) } else { None };
                    hub.deliver(message(r, offset, skip.map(|c| members[c].id.to_string())));
                    for c in model.get(&r).into_iter().flatten() {
                        if Some(*c) != skip {
                            expected[*c].push(offset);
                        }
                    }
                }
            }
        }
        for (c, m) in members.iter().enumerate() {
            let got: Vec<u64> = drain(&m.mailbox).iter().filter_map(|f| f.offset).collect();
            prop_assert_eq!(&got, &expected[c], "member {}", c);
        }
    }
}

/// A room message of room `r` with `offset`, not for connection `skip`.
fn message(r: usize, offset: u64, skip: Option<String>) -> BusEvent {
    BusEvent::Message {
        publication: Arc::new(Publication {
            room: room(r),
            event: EventName::new("e").expect("valid event"),
            data: serde_json::json!(offset),
            from: UserId::new("x").expect("valid user"),
            offset: Some(offset),
            ts: 0,
        }),
        except_conn: skip,
    }
}

#[test]
fn room_messages_are_counted_for_the_heartbeat_with_or_without_local_members() {
    let hub = Hub::new(
        Arc::new(Metrics::new()),
        RoomInterest::detached(),
        test_lifecycle(),
    );
    let m = Member {
        id: Arc::from("c0"),
        user: UserId::new("u0").expect("valid user"),
        wire: Wire::Json,
        mailbox: Mailbox::new(100),
    };
    hub.join(&room(0), &m);
    hub.deliver(message(0, 1, None));
    hub.deliver(message(0, 2, None));
    // No local member: still counted (pattern mode delivers every room).
    hub.deliver(message(1, 1, None));
    assert_eq!(hub.messages_total(), 3);
    let counts = hub.take_message_counts();
    assert_eq!(counts.get(&room(0)), Some(&2));
    assert_eq!(counts.get(&room(1)), Some(&1));
    assert!(hub.take_message_counts().is_empty(), "taken once");

    // A room whose last member leaves keeps what it counted until the next take.
    hub.deliver(message(0, 3, None));
    hub.leave(&room(0), &m.id);
    hub.deliver(message(0, 4, None));
    assert_eq!(hub.take_message_counts().get(&room(0)), Some(&2));
    assert_eq!(hub.messages_total(), 5);
}

#[tokio::test]
async fn the_hub_does_not_keep_its_bus_alive() {
    use roomcast_redis_bridge::{Bus, BusConfig, MemoryBus};
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BusConfig::default()));
    let hub = Hub::new(
        Arc::new(Metrics::new()),
        RoomInterest::new(&bus),
        test_lifecycle(),
    );
    bus.start(hub.clone()).await.expect("memory bus starts");
    let weak = Arc::downgrade(&bus);
    drop(bus);
    // The bus held the hub and the hub held the bus: dropping the node's last handle on
    // the bus must free it (and with it the hub), not leak both.
    assert!(weak.upgrade().is_none(), "the bus is freed");
    assert_eq!(Arc::strong_count(&hub), 1, "and lets go of the hub");
}

/// A lifecycle that never drains, for a hub on its own.
fn test_lifecycle() -> crate::lifecycle::Lifecycle {
    crate::lifecycle::Lifecycle::new(tokio_util::sync::CancellationToken::new())
}
