//! The balancer's mechanisms, proven deterministically: stand-in replicas whose latency and
//! answers each test sets, and tokio's paused clock, so a 200 ms replica costs no real time.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use super::*;

/// How a stand-in replica answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Status(Code),
    /// The connection fails.
    Refused,
}

#[derive(Clone)]
struct Replica {
    latency: Duration,
    answer: Answer,
}

#[derive(Default)]
struct Fleet {
    replicas: Mutex<HashMap<String, Replica>>,
    calls: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

impl Fleet {
    fn set(&self, url: &str, latency_ms: u64, answer: Answer) {
        self.replicas
            .lock()
            .unwrap()
            .insert(url.to_owned(), Replica { latency: Duration::from_millis(latency_ms), answer });
    }

    fn calls(&self, url: &str) -> usize {
        self.calls.lock().unwrap().get(url).copied().unwrap_or(0)
    }

    fn connector(self: &Arc<Self>) -> Connector {
        let fleet = self.clone();
        Arc::new(move |target: &Target| {
            let (fleet, url) = (fleet.clone(), target.url.clone());
            Ok(BoxCloneSyncService::new(tower::service_fn(move |_request: HttpRequest| {
                let (fleet, url) = (fleet.clone(), url.clone());
                async move {
                    let replica = fleet.replicas.lock().unwrap()[&url].clone();
                    *fleet.calls.lock().unwrap().entry(url).or_default() += 1;
                    fleet.total.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(replica.latency).await;
                    match replica.answer {
                        Answer::Ok => Ok(http::Response::builder()
                            .header("grpc-status", "0")
                            .body(Body::default())
                            .unwrap()),
                        Answer::Status(code) => Ok(tonic::Status::new(code, "stand-in").into_http()),
                        Answer::Refused => Err(BoxError::from("connection refused")),
                    }
                }
            })))
        })
    }
}

fn targets(urls: &[(&str, u32)]) -> Source {
    Source::Static(urls.iter().map(|(u, w)| Target { url: (*u).to_owned(), weight: *w }).collect())
}

async fn peer(fleet: &Arc<Fleet>, source: Source, config: ResilienceConfig) -> PeerChannel {
    PeerChannel::with_connector("test", "books", source, config, fleet.connector()).await.unwrap()
}

/// One call through the channel; its gRPC status code.
async fn call(channel: &PeerChannel) -> Code {
    let response = channel.clone().oneshot(http::Request::new(Body::default())).await.unwrap();
    classify_code(&response)
}

fn classify_code(response: &HttpResponse) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

#[tokio::test(start_paused = true)]
async fn a_replica_slowed_by_200ms_gets_under_a_tenth_of_the_traffic() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 2, Answer::Ok);
    fleet.set("http://b", 202, Answer::Ok);
    let channel =
        peer(&fleet, targets(&[("http://a", 1), ("http://b", 1)]), ResilienceConfig::default()).await;
    for _ in 0..1000 {
        assert_eq!(call(&channel).await, Code::Ok);
    }
    let slow = fleet.calls("http://b");
    assert!(slow < 100, "the slow replica took {slow} of 1000 calls");
}

#[tokio::test(start_paused = true)]
async fn busy_replicas_get_fewer_calls_when_latency_is_equal() {
    let fleet = Arc::new(Fleet::default());
    for url in ["http://a", "http://b", "http://c"] {
        fleet.set(url, 10, Answer::Ok);
    }
    let channel = peer(
        &fleet,
        targets(&[("http://a", 1), ("http://b", 1), ("http://c", 1)]),
        ResilienceConfig::default(),
    )
    .await;
    let calls: Vec<_> = (0..300).map(|_| call(&channel)).collect();
    let codes = futures::future::join_all(calls).await;
    assert!(codes.iter().all(|c| *c == Code::Ok));
    for url in ["http://a", "http://b", "http://c"] {
        let n = fleet.calls(url);
        assert!((60..=140).contains(&n), "{url} took {n} of 300 concurrent calls");
    }
}

#[tokio::test(start_paused = true)]
async fn static_weights_split_idle_traffic_in_proportion() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Ok);
    fleet.set("http://b", 1, Answer::Ok);
    let channel =
        peer(&fleet, targets(&[("http://a", 3), ("http://b", 1)]), ResilienceConfig::default()).await;
    for _ in 0..4000 {
        call(&channel).await;
    }
    let share = fleet.calls("http://a") as f64 / 4000.0;
    assert!((0.7125..=0.7875).contains(&share), "weight 3 of 4 took {share:.3} of the calls");
}

#[tokio::test(start_paused = true)]
async fn a_refusing_replica_loses_its_traffic_and_wins_it_back_when_it_recovers() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Ok);
    fleet.set("http://b", 1, Answer::Refused);
    let channel =
        peer(&fleet, targets(&[("http://a", 1), ("http://b", 1)]), ResilienceConfig::default()).await;
    let mut failed = 0;
    for _ in 0..500 {
        if call(&channel).await != Code::Ok {
            failed += 1;
        }
    }
    assert!(failed <= 5, "{failed} calls failed");
    assert!(fleet.calls("http://a") >= 495);

    // Recovered, and a while later: its estimate has decayed, it is tried, and it shares again.
    fleet.set("http://b", 1, Answer::Ok);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = fleet.calls("http://b");
    for _ in 0..200 {
        assert_eq!(call(&channel).await, Code::Ok);
    }
    let after = fleet.calls("http://b") - before;
    assert!(after > 40, "the recovered replica took {after} of 200 calls");
    assert_eq!(channel.status().into_iter().find(|e| e.url == "http://b").unwrap().breaker, "closed");
}

#[tokio::test(start_paused = true)]
async fn a_lone_failing_replica_opens_its_breaker_and_is_ejected_then_a_trial_closes_it() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Status(Code::Unavailable));
    fleet.set("http://b", 1, Answer::Ok);
    // b exists so that a may be ejected (never more than half the set).
    let channel =
        peer(&fleet, targets(&[("http://a", 1), ("http://b", 1)]), ResilienceConfig::default()).await;
    // Keep b busy so that a keeps being chosen until it trips.
    fleet.set("http://b", 60_000, Answer::Ok);
    let busy: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn({
                let channel = channel.clone();
                async move { call(&channel).await }
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let mut codes = Vec::new();
    while fleet.calls("http://a") < 5 {
        codes.push(call(&channel).await);
    }
    let a = channel.status().into_iter().find(|e| e.url == "http://a").unwrap();
    assert_eq!((a.breaker, a.ejected), ("open", true), "{codes:?}");
    for task in busy {
        task.abort();
    }
    fleet.set("http://a", 1, Answer::Ok);
    fleet.set("http://b", 1, Answer::Ok);
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..50 {
        assert_eq!(call(&channel).await, Code::Ok);
    }
    let a = channel.status().into_iter().find(|e| e.url == "http://a").unwrap();
    assert_eq!((a.breaker, a.ejected), ("closed", false));
}

#[tokio::test(start_paused = true)]
async fn never_more_than_half_the_set_is_ejected() {
    let fleet = Arc::new(Fleet::default());
    let urls = ["http://a", "http://b", "http://c", "http://d"];
    for url in urls {
        fleet.set(url, 1, Answer::Status(Code::Unavailable));
    }
    // Breakers out of the way, so ejection alone decides.
    let config = ResilienceConfig {
        breaker: BreakerConfig { max_failures: u32::MAX, ..BreakerConfig::default() },
        ..ResilienceConfig::default()
    };
    let channel = peer(&fleet, targets(&urls.map(|u| (u, 1))), config).await;
    for _ in 0..400 {
        assert_eq!(call(&channel).await, Code::Unavailable);
    }
    let ejected = channel.status().iter().filter(|e| e.ejected).count();
    assert_eq!(ejected, 2, "{:?}", channel.status());
}

#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_calls_fail_fast_without_reaching_a_replica() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Status(Code::Internal));
    let channel = peer(&fleet, targets(&[("http://a", 1)]), ResilienceConfig::default()).await;
    for _ in 0..5 {
        assert_eq!(call(&channel).await, Code::Internal);
    }
    for _ in 0..100 {
        assert_eq!(call(&channel).await, Code::Unavailable);
    }
    assert_eq!(fleet.calls("http://a"), 5, "open: no call reached the replica");
}

#[tokio::test(start_paused = true)]
async fn a_call_over_its_time_counts_as_a_timeout_and_answers_deadline_exceeded() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 10_000, Answer::Ok);
    let config = ResilienceConfig { call_timeout: Duration::from_millis(100), ..ResilienceConfig::default() };
    let channel = peer(&fleet, targets(&[("http://a", 1)]), config).await;
    let started = tokio::time::Instant::now();
    assert_eq!(call(&channel).await, Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_keeps_calls_within_a_fifth_over_the_requests() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Status(Code::Unavailable));
    fleet.set("http://b", 1, Answer::Status(Code::Unavailable));
    let config = ResilienceConfig {
        breaker: BreakerConfig { max_failures: u32::MAX, ..BreakerConfig::default() },
        eject_after: u32::MAX,
        retry_min_per_sec: 0,
        ..ResilienceConfig::default()
    };
    let channel = peer(&fleet, targets(&[("http://a", 1), ("http://b", 1)]), config).await;
    let deadline = Deadline::after(Duration::from_secs(3600));
    for _ in 0..1000 {
        let result = channel
            .retrying(deadline, || async {
                match call(&channel).await {
                    Code::Ok => Ok(()),
                    code => Err(tonic::Status::new(code, "failed")),
                }
            })
            .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
    }
    let calls = fleet.total.load(Ordering::Relaxed);
    assert!((1000..=1200).contains(&calls), "{calls} calls for 1000 requests");
    assert!(calls > 1100, "retries were made while the budget allowed ({calls})");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_deadline_and_on_answers_that_are_not_unavailable() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Status(Code::NotFound));
    let channel = peer(&fleet, targets(&[("http://a", 1)]), ResilienceConfig::default()).await;
    let deadline = Deadline::after(Duration::from_secs(10));
    let attempts = AtomicUsize::new(0);
    let result = channel
        .retrying(deadline, || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(tonic::Status::new(call(&channel).await, "x"))
        })
        .await;
    assert_eq!(result.unwrap_err().code(), Code::NotFound);
    assert_eq!(attempts.load(Ordering::Relaxed), 1, "NOT_FOUND is an answer, not a failure to retry");

    let attempts = AtomicUsize::new(0);
    let deadline = Deadline::after(Duration::ZERO);
    let result = channel
        .retrying(deadline, || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(tonic::Status::unavailable("down"))
        })
        .await;
    assert_eq!(result.unwrap_err().code(), Code::Unavailable);
    assert_eq!(attempts.load(Ordering::Relaxed), 1, "no time left: no retry");
}

#[tokio::test(start_paused = true)]
async fn replicas_that_stay_in_the_set_keep_their_state_across_updates() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Refused);
    fleet.set("http://c", 1, Answer::Ok);
    let channel = peer(&fleet, targets(&[("http://a", 1)]), ResilienceConfig::default()).await;
    for _ in 0..5 {
        call(&channel).await;
    }
    channel
        .shared
        .update(&[Target { url: "http://a".into(), weight: 1 }, Target { url: "http://c".into(), weight: 1 }])
        .unwrap();
    let status = channel.status();
    assert_eq!(status.len(), 2);
    assert_eq!(status[0].breaker, "open", "a's breaker survived the update");
    assert_eq!(call(&channel).await, Code::Ok, "the new replica takes the calls");
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_a_replica_the_call_has_not_failed_on() {
    let fleet = Arc::new(Fleet::default());
    fleet.set("http://a", 1, Answer::Refused);
    fleet.set("http://b", 1, Answer::Ok);
    // Breakers and ejection out of the way: only the retry's choice keeps calls off a.
    let config = ResilienceConfig {
        breaker: BreakerConfig { max_failures: u32::MAX, ..BreakerConfig::default() },
        eject_after: u32::MAX,
        ..ResilienceConfig::default()
    };
    let channel = peer(&fleet, targets(&[("http://a", 1), ("http://b", 1)]), config).await;
    let deadline = Deadline::after(Duration::from_secs(3600));
    for _ in 0..200 {
        let before = fleet.calls("http://a");
        let result = channel
            .retrying(deadline, || async {
                match call(&channel).await {
                    Code::Ok => Ok(()),
                    code => Err(tonic::Status::new(code, "failed")),
                }
            })
            .await;
        assert!(result.is_ok(), "the retry found b");
        assert!(fleet.calls("http://a") - before <= 1, "a is tried at most once per call");
    }
}
