//! What the orders service publishes: OrderPlaced, OrderCancelled and OrderStatusChanged, each
//! in the protobuf envelope every event travels in, written to the outbox in the same
//! transaction as the change.

use bookstore_api::orders::v1 as pb;
use bookstore_platform::clock::now_ms;
use bookstore_platform::events::Event;
use bookstore_platform::grpc::timestamp;
use prost::Message;

use crate::domain::Order;
use crate::grpc::to_proto;

/// The payload schema version of every event orders publishes today.
pub const SCHEMA_VERSION: u32 = 1;

fn envelope(event_type: &str, payload: Vec<u8>) -> Event {
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = pb::EventEnvelope {
        id: id.clone(),
        r#type: event_type.to_owned(),
        time: Some(timestamp(now_ms())),
        // The trace of the request that caused it, so its consumers' work joins that trace.
        traceparent: bookstore_platform::trace::current().map(|t| t.to_string()).unwrap_or_default(),
        payload,
        schema_version: SCHEMA_VERSION,
    };
    Event { id, event_type: event_type.to_owned(), body: envelope.encode_to_vec() }
}

pub fn order_placed(order: &Order) -> Event {
    envelope("OrderPlaced", pb::OrderPlaced { order: Some(to_proto(order)) }.encode_to_vec())
}

pub fn order_cancelled(order: &Order) -> Event {
    envelope("OrderCancelled", pb::OrderCancelled { order: Some(to_proto(order)) }.encode_to_vec())
}

/// `order` as it is now, and the status it left.
pub fn order_status_changed(order: &Order, previous: crate::domain::Status) -> Event {
    let changed = pb::OrderStatusChanged {
        order: Some(to_proto(order)),
        previous_status: previous.as_str().to_owned(),
    };
    envelope("OrderStatusChanged", changed.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn order() -> Order {
        Order {
            id: "o1".into(),
            user_id: "u1".into(),
            status: Status::Placed,
            lines: vec![],
            total_minor: 0,
            currency: "EUR".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn events_carry_their_schema_version_and_decode_past_fields_they_do_not_know() {
        let event = order_placed(&order());
        let envelope = pb::EventEnvelope::decode(event.body.as_slice()).unwrap();
        assert_eq!((envelope.r#type.as_str(), envelope.schema_version), ("OrderPlaced", SCHEMA_VERSION));

        // A newer producer added field 99 to the envelope: this consumer still reads the rest.
        let mut newer = event.body.clone();
        prost::encoding::string::encode(99, &"from the future".to_owned(), &mut newer);
        let read = pb::EventEnvelope::decode(newer.as_slice()).unwrap();
        assert_eq!(read.id, event.id);
        let placed = pb::OrderPlaced::decode(read.payload.as_slice()).unwrap();
        assert_eq!(placed.order.unwrap().id, "o1");
    }
}
