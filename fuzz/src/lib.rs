//! The checks the fuzz targets run, shared between them: no input may panic, and what
//! decodes must encode and decode back to the same value.

use roomcast_gateway::sse::{parse_last_event_id, parse_positions, parse_rooms, SseParamError};
use roomcast_protocol::{
    close, BusMessage, ClientMessage, Encoding, Envelope, ErrorCode, ServerMessage,
    ENVELOPE_VERSION,
};

/// Decodes a client frame as a node does; checks what the node would answer.
pub fn client_frame(enc: Encoding, data: &[u8]) {
    match enc.decode_client(data) {
        Ok(msg) => {
            // A decoded message only carries an id that can be echoed.
            if let Some(id) = msg.id() {
                assert!(id.is_valid(), "decoded an unusable id {id:?}");
            }
            for other in Encoding::ALL {
                round_trip_client(other, &msg);
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::InvalidMessage | ErrorCode::UnknownType),
                "unexpected code {:?}",
                e.code
            );
            if let Some(id) = &e.id {
                assert!(id.is_valid(), "an error would echo an unusable id {id:?}");
            }
            // The error reply itself must encode, in the connection's encoding.
            let reply = ServerMessage::error(e.code, e.message, e.id);
            let bytes = enc.encode_server(&reply).expect("an error reply encodes");
            assert_eq!(
                enc.decode_server(&bytes).expect("an error reply decodes"),
                reply
            );
        }
    }
}

fn round_trip_client(enc: Encoding, msg: &ClientMessage) {
    let bytes = enc.encode(msg).expect("a decoded message encodes");
    let back = enc
        .decode_client(&bytes)
        .unwrap_or_else(|e| panic!("{enc:?}: an encoded message does not decode: {e:?}"));
    if &back != msg {
        // serde_json parses a float of 17 significant digits to within one unit in the
        // last place, not always exactly (it lacks the `float_roundtrip` feature), so
        // floats are compared to that precision.
        let (a, b) = (to_value(&back), to_value(msg));
        assert!(same(&a, &b), "{enc:?} round trip:\n{back:?}\n{msg:?}");
    }
}

fn to_value(m: &ClientMessage) -> serde_json::Value {
    serde_json::to_value(m).expect("a message is a JSON value")
}

/// Equal, floats within a few units in the last place.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => {
                x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
            }
            _ => false,
        },
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Decodes a bus envelope (room, user or control channel) as a node's subscriber does.
pub fn bus_envelope(data: &[u8]) -> Option<Envelope> {
    match Envelope::from_msgpack(data) {
        Ok(env) => {
            assert_eq!(env.v, ENVELOPE_VERSION);
            let _ = env.msg.clone().into_publication();
            let _ = env.msg.clone().into_direct();
            let bytes = env.to_msgpack().expect("a decoded envelope encodes");
            let back = Envelope::from_msgpack(&bytes).expect("an encoded envelope decodes");
            assert_eq!(back, env, "envelope round trip");
            Some(env)
        }
        Err(e) => {
            assert!(matches!(
                e.code,
                ErrorCode::InvalidMessage | ErrorCode::TooLarge
            ));
            assert!(e.id.is_none());
            None
        }
    }
}

/// A control message (`disconnect`) decoded and judged as a node's subscriber does, and
/// one built from the input's bytes.
pub fn control_message(data: &[u8]) {
    if let Some(env) = bus_envelope(data) {
        if let BusMessage::Disconnect { code, .. } = &env.msg {
            // What a node accepts from the control channel is a code it may send.
            if close::valid_for_disconnect(*code) {
                assert!(
                    close::sendable(*code),
                    "disconnect code {code} is not sendable"
                );
            }
        }
    }
    // Structure-aware half: a disconnect of any valid user with any code survives the bus.
    if let [hi, lo, rest @ ..] = data {
        let code = u16::from_be_bytes([*hi, *lo]);
        if let Ok(user) = roomcast_protocol::UserId::new(&String::from_utf8_lossy(rest)) {
            let env = Envelope::new("n", BusMessage::Disconnect { user, code });
            let bytes = env.to_msgpack().expect("a disconnect encodes");
            assert_eq!(
                Envelope::from_msgpack(&bytes).expect("a disconnect decodes"),
                env
            );
        }
    }
}

/// The `/sse` parameters: the first byte picks `--max-rooms` (1..=64), the rest is the
/// raw text of `rooms=` / `since=` (percent-decoded as the query is) and of
/// `Last-Event-ID`.
pub fn sse_params(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first % 64) + 1;
    let raw = String::from_utf8_lossy(rest);
    let decoded = roomcast_gateway::http::percent_decode(&raw);
    for s in [raw.as_ref(), decoded.as_str()] {
        let items = s.split(',').filter(|x| !x.trim().is_empty()).count();
        match parse_rooms(s, max) {
            Ok(rooms) => {
                assert!(items <= max && rooms.len() <= items);
                let joined = rooms
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                assert_eq!(parse_rooms(&joined, max).as_ref(), Ok(&rooms));
            }
            Err(SseParamError::TooManyRooms(m)) => assert!(m == max && items > max),
            Err(SseParamError::InvalidRoom { name, .. }) => assert!(name.len() <= 140),
            Err(e) => panic!("parse_rooms: unexpected {e}"),
        }
        for since in [
            parse_positions(s, "since", max),
            parse_last_event_id(s, max),
        ] {
            match since {
                Ok(p) => {
                    assert!(items <= max && p.len() <= items);
                    let joined = p
                        .iter()
                        .map(|(room, offset)| format!("{room}:{offset}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    assert_eq!(parse_positions(&joined, "since", max).as_ref(), Ok(&p));
                }
                Err(SseParamError::TooManyPositions(_, m)) => assert!(m == max && items > max),
                Err(SseParamError::TooLong(_, m)) => assert!(s.len() > m),
                Err(e) => panic!("parse_positions: unexpected {e}"),
            }
        }
    }
}

/// A backend API body (`/api/publish`, single or batch, `/api/send`, `/api/disconnect`)
/// and a `/client/commands` body (one command or a list), read as the node reads them.
pub fn api_bodies(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let items: Vec<serde_json::Value> = match &body {
        serde_json::Value::Array(items) => items.clone(),
        v => vec![v.clone()],
    };
    let _ = serde_json::from_value::<roomcast_gateway::api::SendBody>(body.clone());
    let _ = serde_json::from_value::<roomcast_gateway::api::DisconnectBody>(body);
    // `/api/publish` and `/client/commands` take each item of a list on its own.
    for item in items.iter().take(100) {
        let _ = serde_json::from_value::<roomcast_gateway::api::PublishBody>(item.clone());
        let bytes = serde_json::to_vec(item).expect("a JSON value encodes");
        client_frame(Encoding::Json, &bytes);
    }
}
