//! The contracts between bookstore services, generated at build time from `proto/`.
//!
//! One module per proto package, e.g. [`books::v1`].
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

pub mod books {
    pub mod v1 {
        tonic::include_proto!("bookstore.books.v1");
    }
}

pub mod users {
    pub mod v1 {
        tonic::include_proto!("bookstore.users.v1");
    }
}

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("bookstore.orders.v1");
    }
}

pub mod fulfillment {
    pub mod v1 {
        tonic::include_proto!("bookstore.fulfillment.v1");
    }
}

pub mod recommendations {
    pub mod v1 {
        tonic::include_proto!("bookstore.recommendations.v1");
    }
}
