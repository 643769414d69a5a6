//! The preparation: the admin signs in, the catalog is restocked, customers are registered or,
//! if they exist, signed in.

use bookstore_load::client::ShopClient;
use bookstore_load::input::CustomerCount;
use bookstore_load::shop::{self, Preparation, Prepared, RESTOCK};

use crate::fake_shop::{ADMIN_PASSWORD, BOOKS, FakeShop};

pub fn preparation(customers: usize, admin_password: &str) -> Preparation {
    Preparation {
        admin_username: "admin".into(),
        admin_password: admin_password.parse().unwrap(),
        customers: CustomerCount::new(customers).unwrap(),
        customer_prefix: "bench".into(),
    }
}

pub fn client(fake: &FakeShop) -> ShopClient {
    ShopClient::new(&fake.address.parse().unwrap(), 64, std::time::Duration::from_secs(5))
}

#[tokio::test]
async fn new_customers_are_registered_existing_ones_signed_in_and_the_books_restocked() {
    let fake = FakeShop::start(&["bench0"]).await;
    let (shop, prepared) = shop::prepare(&client(&fake), &preparation(3, ADMIN_PASSWORD)).await.unwrap();
    assert_eq!(prepared, Prepared { restocked: 5, registered: 2, existing: 1 });
    let tokens: Vec<&str> = shop.customers.iter().map(|c| c.access_token.as_str()).collect();
    assert_eq!(tokens, ["token-bench0", "token-bench1", "token-bench2"]);
    assert_eq!(shop.books, BOOKS.map(|(id, _)| id));
    assert!(shop.words.contains(&"neuromancer".to_owned()));
    let mut restocked = fake.take_seen().restocked;
    restocked.sort();
    assert_eq!(restocked, BOOKS.map(|(id, _)| (id.to_owned(), RESTOCK)));
}

#[tokio::test]
async fn a_wrong_admin_password_stops_the_preparation_and_says_so() {
    let fake = FakeShop::start(&[]).await;
    let error = shop::prepare(&client(&fake), &preparation(1, "not the password")).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("admin") && message.contains("401"), "{message}");
    assert!(fake.take_seen().restocked.is_empty(), "nothing was restocked");
}
