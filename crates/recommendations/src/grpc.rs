//! The tonic adapter, and where rankings become answers: each ranked book is read from books
//! (with recommendations' own service token, which books verifies as it does any caller's),
//! books out of stock or gone are left out, and a ranking too short is filled up with
//! best-sellers, then with the catalog (title order). Each item says which of the three it came
//! from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bookstore_api::books::v1 as books;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_api::recommendations::v1 as pb;
use bookstore_api::recommendations::v1::recommendation_service_server::RecommendationService;
use bookstore_platform::auth::{Role, ServiceToken, check_service_scope, require};
use bookstore_platform::balance::PeerChannel;
use bookstore_platform::clock::now_ms;
use tonic::{Request, Response, Status};

use crate::store::{Ranked, Store};

const PEOPLE: &[Role] = &[Role::Customer, Role::Staff, Role::Admin];
/// Items in an answer unless the caller asks for another number (1 to [`MAX_LIMIT`]).
pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 50;
/// Ranked books read beyond the limit, for those out of stock.
const SPARE: usize = 10;
/// The catalog's first page, the last resort.
const CATALOG_PAGE: i32 = 50;

/// Why a book is recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BoughtTogether,
    BestSeller,
    Catalog,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BoughtTogether => "bought_together",
            Reason::BestSeller => "best_seller",
            Reason::Catalog => "catalog",
        }
    }
}

/// `0` → the default; else 1 to [`MAX_LIMIT`].
pub fn parse_limit(limit: i32) -> Result<usize, Status> {
    match limit {
        0 => Ok(DEFAULT_LIMIT),
        1.. if limit as usize <= MAX_LIMIT => Ok(limit as usize),
        _ => Err(Status::invalid_argument(format!("limit: between 1 and {MAX_LIMIT}"))),
    }
}

fn store_error(err: anyhow::Error) -> Status {
    bookstore_platform::status::unexpected("recommendations", &err)
}

/// The recommendations service's gRPC face.
#[derive(Clone)]
pub struct RecommendationsGrpc {
    store: Store,
    books: BookServiceClient<PeerChannel>,
    token: Arc<ServiceToken>,
    /// Answers that are the same for every caller (a book's, the best-sellers), kept a few
    /// seconds: a book page's recommendations cost a dozen reads of books when worked out.
    answers: Option<moka::future::Cache<String, pb::Recommendations>>,
}

/// How many answers are kept at most.
const KEPT_ANSWERS: u64 = 10_000;

/// An answer being put together: its items, and the books it may not hold (already in it,
/// asked about, already bought).
struct Answer {
    items: Vec<pb::Recommendation>,
    limit: usize,
    excluded: HashSet<String>,
}

impl Answer {
    fn new(limit: usize, excluded: HashSet<String>) -> Self {
        Self { items: Vec::with_capacity(limit), limit, excluded }
    }

    fn full(&self) -> bool {
        self.items.len() >= self.limit
    }

    /// Adds `book` for `reason`, unless the answer is full, holds or excludes it, or it is out
    /// of stock.
    fn offer(&mut self, book: books::Book, reason: Reason, score: i64) {
        if self.full() || book.stock <= 0 || !self.excluded.insert(book.id.clone()) {
            return;
        }
        self.items.push(pb::Recommendation { book: Some(book), reason: reason.as_str().to_owned(), score });
    }
}

impl RecommendationsGrpc {
    /// Answers the same for every caller are kept `keep` (none when zero).
    pub fn new(
        store: Store,
        books: PeerChannel,
        token: Arc<ServiceToken>,
        keep: std::time::Duration,
    ) -> Self {
        let answers = (!keep.is_zero())
            .then(|| moka::future::Cache::builder().max_capacity(KEPT_ANSWERS).time_to_live(keep).build());
        Self { store, books: BookServiceClient::new(books), token, answers }
    }

    /// The answer kept under `key`, or `work`'s, kept. Callers asking for the same key at once
    /// wait for one `work` (an expired answer is worked out once, not once per caller).
    async fn kept<F>(&self, key: String, work: F) -> Result<pb::Recommendations, Status>
    where
        F: std::future::Future<Output = Result<pb::Recommendations, Status>>,
    {
        let Some(answers) = &self.answers else { return work.await };
        answers.try_get_with(key, work).await.map_err(|e: Arc<Status>| Status::clone(&e))
    }

    /// The books of `ids` that exist, by id, read at once with the service's token.
    async fn books(&self, ids: &[String]) -> Result<HashMap<String, books::Book>, Status> {
        let reads = ids.iter().map(|id| {
            let mut client = self.books.clone();
            let id = id.clone();
            async move {
                let mut request = Request::new(books::GetBookRequest { id });
                self.token.authorize(&mut request).await?;
                match client.get_book(request).await {
                    Ok(book) => Ok(Some(book.into_inner())),
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                }
            }
        });
        let found = futures::future::try_join_all(reads).await?;
        Ok(found.into_iter().flatten().map(|b| (b.id.clone(), b)).collect())
    }

    /// Offers the books of `ranked`, in order, for `reason`.
    async fn offer_ranked(
        &self,
        answer: &mut Answer,
        ranked: &[Ranked],
        reason: Reason,
    ) -> Result<(), Status> {
        let wanted: Vec<String> = ranked
            .iter()
            .filter(|r| !answer.excluded.contains(&r.book_id))
            .map(|r| r.book_id.clone())
            .collect();
        if answer.full() || wanted.is_empty() {
            return Ok(());
        }
        let mut found = self.books(&wanted).await?;
        for r in ranked {
            if let Some(book) = found.remove(&r.book_id) {
                answer.offer(book, reason, r.score);
            }
        }
        Ok(())
    }

    /// Fills `answer` up with best-sellers, then with the catalog.
    async fn fill(&self, mut answer: Answer) -> Result<pb::Recommendations, Status> {
        if !answer.full() {
            let room = (answer.limit + answer.excluded.len() + SPARE) as i64;
            let best = self.store.best_sellers(now_ms(), room).await.map_err(store_error)?;
            self.offer_ranked(&mut answer, &best, Reason::BestSeller).await?;
        }
        if !answer.full() {
            let mut request =
                Request::new(books::ListBooksRequest { page: 1, limit: CATALOG_PAGE, author: None });
            self.token.authorize(&mut request).await?;
            let catalog = self.books.clone().list_books(request).await?.into_inner();
            for book in catalog.books {
                answer.offer(book, Reason::Catalog, 0);
            }
        }
        Ok(pb::Recommendations { items: answer.items })
    }
}

#[tonic::async_trait]
impl RecommendationService for RecommendationsGrpc {
    async fn bought_together(
        &self,
        request: Request<pb::BoughtTogetherRequest>,
    ) -> Result<Response<pb::Recommendations>, Status> {
        check_service_scope(&request, "books:read")?;
        let req = request.into_inner();
        let limit = parse_limit(req.limit)?;
        let key = format!("book {} {limit}", req.book_id);
        let answer = self.kept(key, async {
            if self.books(std::slice::from_ref(&req.book_id)).await?.is_empty() {
                return Err(Status::not_found(format!("no book with id {}", req.book_id)));
            }
            let ranked = self
                .store
                .bought_together(&req.book_id, (limit + SPARE) as i64)
                .await
                .map_err(store_error)?;
            let mut answer = Answer::new(limit, HashSet::from([req.book_id.clone()]));
            self.offer_ranked(&mut answer, &ranked, Reason::BoughtTogether).await?;
            self.fill(answer).await
        });
        Ok(Response::new(answer.await?))
    }

    async fn for_me(
        &self,
        request: Request<pb::ForMeRequest>,
    ) -> Result<Response<pb::Recommendations>, Status> {
        let user = require(&request, PEOPLE)?.subject.clone();
        let limit = parse_limit(request.get_ref().limit)?;
        let (ranked, bought) =
            self.store.for_customer(&user, (limit + SPARE) as i64).await.map_err(store_error)?;
        let mut answer = Answer::new(limit, bought);
        self.offer_ranked(&mut answer, &ranked, Reason::BoughtTogether).await?;
        Ok(Response::new(self.fill(answer).await?))
    }

    async fn best_sellers(
        &self,
        request: Request<pb::BestSellersRequest>,
    ) -> Result<Response<pb::Recommendations>, Status> {
        check_service_scope(&request, "books:read")?;
        let limit = parse_limit(request.get_ref().limit)?;
        let answer =
            self.kept(format!("best-sellers {limit}"), self.fill(Answer::new(limit, HashSet::new())));
        Ok(Response::new(answer.await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_one_to_fifty_and_zero_means_ten() {
        assert_eq!(parse_limit(0).unwrap(), 10);
        assert_eq!(parse_limit(1).unwrap(), 1);
        assert_eq!(parse_limit(50).unwrap(), 50);
        assert_eq!(parse_limit(51).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(parse_limit(-1).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    fn book(id: &str, stock: i64) -> books::Book {
        books::Book { id: id.into(), stock, ..Default::default() }
    }

    #[test]
    fn an_answer_takes_each_book_once_in_stock_and_not_excluded_up_to_its_limit() {
        let mut answer = Answer::new(2, HashSet::from(["asked".to_owned()]));
        answer.offer(book("asked", 5), Reason::BoughtTogether, 9);
        answer.offer(book("sold-out", 0), Reason::BoughtTogether, 8);
        answer.offer(book("a", 1), Reason::BoughtTogether, 7);
        answer.offer(book("a", 1), Reason::BestSeller, 6);
        answer.offer(book("b", 1), Reason::BestSeller, 5);
        answer.offer(book("c", 1), Reason::Catalog, 0);
        let got: Vec<(&str, &str)> =
            answer.items.iter().map(|i| (i.book.as_ref().unwrap().id.as_str(), i.reason.as_str())).collect();
        assert_eq!(got, [("a", "bought_together"), ("b", "best_seller")]);
    }
}
