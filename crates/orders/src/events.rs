//! What the orders service publishes: OrderPlaced, OrderCancelled and OrderStatusChanged, each
//! in the protobuf envelope every event travels in, written to the outbox in the same
//! transaction as the change.

use bookstore_api::orders::v1 as pb;
use bookstore_platform::crypto::DataKey;
use bookstore_platform::events::Event;
use prost::Message;

use crate::domain::Order;
use crate::grpc::to_proto;

/// The payload schema version of every event orders publishes today.
pub const SCHEMA_VERSION: u32 = 1;

fn envelope(event_type: &str, payload: Vec<u8>) -> Event {
    bookstore_platform::events::enveloped(event_type, payload, SCHEMA_VERSION)
}

/// What seals the shipping address in OrderPlaced: [`bookstore_platform::crypto::event_key`].
pub const SHIPPING_ADDRESS: &str = "shipping-address";

/// OrderPlaced: the order without personal data, and its shipping address sealed under `seal`
/// (the events key for [`SHIPPING_ADDRESS`]), bound to the order's id.
pub fn order_placed(order: &Order, seal: &DataKey) -> Event {
    let sealed_shipping_address = order
        .shipping_address
        .as_ref()
        .map(|a| seal.encrypt(&order.id, "shipping_address", &a.to_json()))
        .unwrap_or_default();
    envelope(
        "OrderPlaced",
        pb::OrderPlaced { order: Some(to_proto(order)), sealed_shipping_address }.encode_to_vec(),
    )
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
            shipping_address: Some(
                crate::domain::PlainAddress {
                    name: "Ada Lovelace".into(),
                    line1: "12 St James's Square".into(),
                    ..Default::default()
                }
                .parse()
                .unwrap(),
            ),
            status_reason: String::new(),
        }
    }

    #[test]
    fn order_placed_carries_the_address_sealed_and_nothing_of_it_in_the_clear() {
        let master = bookstore_platform::crypto::MasterKey::from_base64(
            &bookstore_platform::crypto::MasterKey::generate_base64(),
        )
        .unwrap();
        let seal = bookstore_platform::crypto::event_key(&master, SHIPPING_ADDRESS);
        let event = order_placed(&order(), &seal);
        let bytes = event.body.as_slice();
        assert!(!bytes.windows(4).any(|w| w == b"Ada " || w == b"Squa"), "no plaintext in the event");
        let envelope = pb::EventEnvelope::decode(bytes).unwrap();
        let placed = pb::OrderPlaced::decode(envelope.payload.as_slice()).unwrap();
        assert!(placed.order.unwrap().shipping_address.is_none());
        // A consumer holding the master key opens it.
        let consumer = bookstore_platform::crypto::event_key(&master, SHIPPING_ADDRESS);
        let json = consumer.decrypt("o1", "shipping_address", &placed.sealed_shipping_address).unwrap();
        assert_eq!(
            crate::domain::ShippingAddress::from_json(&json).unwrap(),
            order().shipping_address.unwrap()
        );
    }

    #[test]
    fn events_carry_their_schema_version_and_decode_past_fields_they_do_not_know() {
        let key = bookstore_platform::crypto::DataKey::new(
            "events",
            "k".into(),
            &bookstore_platform::crypto::DataKey::generate_material(),
        );
        let event = order_placed(&order(), &key);
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
