//! Prometheus metrics of a node, served at `/metrics`. Names are listed in
//! docs/operations.md; the Grafana dashboard and alert rules use only these.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use roomcast_redis_bridge::{BusStats, ShardState};
use std::sync::atomic::Ordering;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// Open client connections by transport (`ws`, `sse`).
    pub connections: IntGaugeVec,
    /// Connections accepted since start.
    pub connections_accepted: IntCounter,
    /// Client messages received, by type.
    pub messages_in: IntCounterVec,
    /// Messages sent to clients, by type.
    pub messages_out: IntCounterVec,
    /// Bytes received from clients.
    pub bytes_in: IntCounter,
    /// Bytes queued to clients.
    pub bytes_out: IntCounter,
    /// Errors sent to clients, by code.
    pub errors: IntCounterVec,
    /// Connections closed by the server, by close code.
    pub closes: IntCounterVec,
    /// Requests refused by the rate limiter.
    pub rate_limited: IntCounter,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumer_closes: IntCounter,
    /// Frames the fan-out wrote straight to an idle WebSocket (no queue, no wake-up).
    pub express_writes: IntCounter,
    /// Refused tokens, by reason.
    pub auth_failures: IntCounterVec,
    /// Time to hand one room message to every local member.
    pub fanout_seconds: Histogram,
    /// Rooms with local members.
    pub rooms: IntGauge,
    /// 1 while the bus is connected.
    pub bus_up: IntGauge,
    /// Bus reconnects.
    pub bus_reconnects: IntCounter,
    /// Failed bus publishes.
    pub bus_publish_errors: IntCounter,
    /// Envelopes received from the bus.
    pub bus_messages_received: IntCounter,
    /// Gaps on the bus repaired from history.
    pub bus_gap_repairs: IntCounter,
    /// Times the subscription fell behind (`--bus-max-lag`) and was re-synchronised.
    pub bus_lag_resyncs: IntCounter,
    /// Losses on the bus that could not be repaired (members closed with 1013).
    pub bus_gaps_lost: IntCounter,
    /// Envelopes read from Redis and dropped as bad input.
    pub bus_bad_envelopes: IntCounter,
    /// Of those, room messages whose offset or epoch the room's history does not hold.
    pub bus_forged_offsets: IntCounter,
    /// Of those, disconnects with a close code a disconnect may not carry.
    pub bus_bad_controls: IntCounter,
    /// Room messages received for rooms with no local member.
    pub bus_unwanted_room_messages: IntCounter,
    /// Rooms mode: SUBSCRIBE commands sent.
    pub bus_subscribe_commands: IntCounter,
    /// Rooms mode: UNSUBSCRIBE commands sent.
    pub bus_unsubscribe_commands: IntCounter,
    /// Rooms mode: room channels subscribed now.
    pub bus_subscribed_rooms: IntGauge,
    /// Rooms mode: user channels subscribed now.
    pub bus_subscribed_users: IntGauge,
    /// Redis calls that carried room publishes.
    pub bus_publish_batches: IntCounter,
    /// Room publishes sent in those calls.
    pub bus_publishes_batched: IntCounter,
    /// Redis calls that carried first joins.
    pub bus_join_batches: IntCounter,
    /// First joins sent to Redis in those calls.
    pub bus_joins_batched: IntCounter,
    /// Time from a message's server timestamp to its local delivery.
    pub bus_delivery_seconds: Histogram,
    /// Backend API requests, by route and status.
    pub api_requests: IntCounterVec,
    /// 1 while the node drains.
    pub draining: IntGauge,
    /// Backend hook calls, by hook (`connect`, `join`, `publish`) and result (`allow`,
    /// `deny`, `busy`, `timeout`, `unreachable`, `status`, `malformed`).
    pub hook_requests: IntCounterVec,
    /// Time of a backend hook call, by hook.
    pub hook_duration: HistogramVec,
    /// Redis Cluster: 1 per shard primary whose subscription connection answers, 0 if not.
    pub bus_shard_up: IntGaugeVec,
    /// Redis Cluster: slot map reads (start, and after every cut).
    pub bus_topology_refreshes: IntCounter,
    /// Redis Cluster: subscriptions Redis dropped because their slot moved.
    pub bus_slot_moves: IntCounter,
    /// Rooms given a new epoch because a failover lost publishes this node had delivered.
    pub bus_epoch_resets: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

impl Metrics {
    /// Registers every metric in a fresh registry. Names are constants, so a failure
    /// here is a programming error caught by the first test run.
    pub fn new() -> Self {
        let r = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new(
                "roomcast_connections",
                "Open client connections by transport",
            ),
            &["transport"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(connections.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let m = Metrics {
            connections,
            connections_accepted: counter(
                &r,
                "roomcast_connections_accepted_total",
                "Client connections accepted",
            ),
            messages_in: counter_vec(
                &r,
                "roomcast_messages_in_total",
                "Client messages received, by type",
                &["type"],
            ),
            messages_out: counter_vec(
                &r,
                "roomcast_messages_out_total",
                "Messages sent to clients, by type",
                &["type"],
            ),
            bytes_in: counter(&r, "roomcast_bytes_in_total", "Bytes received from clients"),
            bytes_out: counter(&r, "roomcast_bytes_out_total", "Bytes queued to clients"),
            errors: counter_vec(
                &r,
                "roomcast_errors_total",
                "Errors sent to clients, by code",
                &["code"],
            ),
            closes: counter_vec(
                &r,
                "roomcast_closes_total",
                "Connections closed by the server, by close code",
                &["code"],
            ),
            rate_limited: counter(
                &r,
                "roomcast_rate_limited_total",
                "Requests refused by the rate limiter",
            ),
            slow_consumer_closes: counter(
                &r,
                "roomcast_slow_consumer_closes_total",
                "Connections closed because their outbound queue overflowed",
            ),
            express_writes: counter(
                &r,
                "roomcast_express_writes_total",
                "Frames the fan-out wrote straight to an idle WebSocket's socket instead of its queue",
            ),
            auth_failures: counter_vec(
                &r,
                "roomcast_auth_failures_total",
                "Refused tokens, by reason",
                &["reason"],
            ),
            fanout_seconds: histogram(
                &r,
                "roomcast_fanout_seconds",
                "Time to hand one room message to every local member",
            ),
            rooms: gauge(&r, "roomcast_rooms", "Rooms with local members"),
            bus_up: gauge(
                &r,
                "roomcast_bus_up",
                "1 while the cluster bus is connected",
            ),
            bus_reconnects: counter(&r, "roomcast_bus_reconnects_total", "Bus reconnects"),
            bus_publish_errors: counter(
                &r,
                "roomcast_bus_publish_errors_total",
                "Failed bus publishes",
            ),
            bus_messages_received: counter(
                &r,
                "roomcast_bus_messages_received_total",
                "Envelopes received from the bus",
            ),
            bus_gap_repairs: counter(
                &r,
                "roomcast_bus_gap_repairs_total",
                "Gaps on the bus repaired from history",
            ),
            bus_lag_resyncs: counter(
                &r,
                "roomcast_bus_lag_resyncs_total",
                "Times the bus subscription fell behind and was re-synchronised",
            ),
            bus_gaps_lost: counter(
                &r,
                "roomcast_bus_gaps_lost_total",
                "Losses on the bus that history could not repair (local members closed with 1013)",
            ),
            bus_bad_envelopes: counter(
                &r,
                "roomcast_bus_bad_envelopes_total",
                "Envelopes read from Redis and dropped as bad input (malformed, wrong channel, forged offset, bad close code)",
            ),
            bus_unwanted_room_messages: counter(
                &r,
                "roomcast_bus_unwanted_room_messages_total",
                "Room messages received for rooms with no local member (pattern mode: every other room's; rooms mode: only while a left room's channel lingers)",
            ),
            bus_subscribe_commands: counter(
                &r,
                "roomcast_bus_subscribe_commands_total",
                "Rooms mode: SUBSCRIBE commands sent (each may name many channels)",
            ),
            bus_unsubscribe_commands: counter(
                &r,
                "roomcast_bus_unsubscribe_commands_total",
                "Rooms mode: UNSUBSCRIBE commands sent (each may name many channels)",
            ),
            bus_subscribed_rooms: gauge(
                &r,
                "roomcast_bus_subscribed_rooms",
                "Rooms mode: room channels this node is subscribed to",
            ),
            bus_subscribed_users: gauge(
                &r,
                "roomcast_bus_subscribed_users",
                "Rooms mode: user channels this node is subscribed to",
            ),
            bus_forged_offsets: counter(
                &r,
                "roomcast_bus_forged_offsets_total",
                "Room messages dropped because the room's history does not hold their offset and epoch",
            ),
            bus_bad_controls: counter(
                &r,
                "roomcast_bus_bad_controls_total",
                "Disconnects from the bus dropped for a close code a disconnect may not carry",
            ),
            bus_publish_batches: counter(
                &r,
                "roomcast_bus_publish_batches_total",
                "Redis calls that carried room publishes (one script call per batch)",
            ),
            bus_publishes_batched: counter(
                &r,
                "roomcast_bus_publishes_batched_total",
                "Room publishes sent to Redis in those calls",
            ),
            bus_join_batches: counter(
                &r,
                "roomcast_bus_join_batches_total",
                "Redis calls that carried first joins (one join-script call per batch)",
            ),
            bus_joins_batched: counter(
                &r,
                "roomcast_bus_joins_batched_total",
                "First joins (presence add and history read) sent to Redis in those calls",
            ),
            bus_delivery_seconds: histogram(
                &r,
                "roomcast_bus_delivery_seconds",
                "Time from a message's server timestamp to its local delivery",
            ),
            api_requests: counter_vec(
                &r,
                "roomcast_api_requests_total",
                "Backend API requests, by route and status",
                &["route", "status"],
            ),
            draining: gauge(&r, "roomcast_draining", "1 while the node drains"),
            hook_requests: counter_vec(
                &r,
                "roomcast_hook_requests_total",
                "Backend hook calls, by hook and result",
                &["hook", "result"],
            ),
            hook_duration: {
                let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "roomcast_hook_duration_seconds",
                        "Time of a backend hook call, by hook",
                    )
                    .buckets(buckets),
                    &["hook"],
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("metric: {e}"));
                h
            },
            bus_shard_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "roomcast_bus_shard_up",
                        "Redis Cluster: 1 per shard primary whose subscription connection answers, 0 if not",
                    ),
                    &["shard"],
                )
                .unwrap_or_else(|e| panic!("metric roomcast_bus_shard_up: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("metric roomcast_bus_shard_up: {e}"));
                g
            },
            bus_topology_refreshes: counter(
                &r,
                "roomcast_bus_topology_refreshes_total",
                "Redis Cluster: times the slot map was read (start, and after a failover, a moved slot or a lost shard; MOVED/ASK on commands are followed inside the redis client)",
            ),
            bus_slot_moves: counter(
                &r,
                "roomcast_bus_slot_moves_total",
                "Redis Cluster: subscriptions Redis dropped because their slot moved to another shard",
            ),
            bus_epoch_resets: counter(
                &r,
                "roomcast_bus_epoch_resets_total",
                "Rooms given a new epoch because a failover lost publishes this node had delivered",
            ),
            registry: r,
        };
        for t in ["ws", "sse"] {
            m.connections.with_label_values(&[t]).set(0);
        }
        for c in roomcast_protocol::ErrorCode::ALL {
            m.errors.with_label_values(&[c.as_str()]);
        }
        m
    }

    /// Adds collectors owned elsewhere (the JWKS cache, the stream consumer); a name
    /// registered twice is a programming error, logged.
    pub fn register(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            if let Err(e) = self.registry.register(c) {
                tracing::warn!(error = %e, "metric not registered");
            }
        }
    }

    /// Sets the per-shard gauge to what the bus says now (a shard gone from the slot map
    /// is removed).
    pub fn set_shards(&self, shards: &[ShardState]) {
        self.bus_shard_up.reset();
        for s in shards {
            self.bus_shard_up
                .with_label_values(&[s.shard.as_str()])
                .set(i64::from(s.up));
        }
    }

    /// The text exposition, with the bus counters brought up to date first.
    pub fn render(&self, bus: &BusStats, bus_up: bool) -> String {
        catch_up(&self.bus_reconnects, bus.reconnects.load(Ordering::Relaxed));
        catch_up(
            &self.bus_publish_errors,
            bus.publish_errors.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_messages_received,
            bus.messages_received.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_gap_repairs,
            bus.gap_repairs.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_lag_resyncs,
            bus.lag_resyncs.load(Ordering::Relaxed),
        );
        catch_up(&self.bus_gaps_lost, bus.gaps_lost.load(Ordering::Relaxed));
        catch_up(
            &self.bus_bad_envelopes,
            bus.bad_envelopes.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_forged_offsets,
            bus.forged_offsets.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_bad_controls,
            bus.bad_controls.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_unwanted_room_messages,
            bus.unwanted_room_messages.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_subscribe_commands,
            bus.subscribe_commands.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_unsubscribe_commands,
            bus.unsubscribe_commands.load(Ordering::Relaxed),
        );
        self.bus_subscribed_rooms
            .set(bus.subscribed_rooms.load(Ordering::Relaxed) as i64);
        self.bus_subscribed_users
            .set(bus.subscribed_users.load(Ordering::Relaxed) as i64);
        catch_up(
            &self.bus_publish_batches,
            bus.publish_batches.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_publishes_batched,
            bus.publishes_batched.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_join_batches,
            bus.join_batches.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_joins_batched,
            bus.joins_batched.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_topology_refreshes,
            bus.topology_refreshes.load(Ordering::Relaxed),
        );
        catch_up(&self.bus_slot_moves, bus.slot_moves.load(Ordering::Relaxed));
        catch_up(
            &self.bus_epoch_resets,
            bus.epoch_resets.load(Ordering::Relaxed),
        );
        self.bus_up.set(i64::from(bus_up));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn catch_up(c: &IntCounter, total: u64) {
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}
