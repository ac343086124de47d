//! The router's access rules, request by request (`tower::ServiceExt::oneshot`,
//! no socket): open without a token; with one, the page, the API and any
//! other path need it, and `/metrics` and the health endpoints follow their
//! settings.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::config::{ServerConfig, TokenSource, UiConfig};
use crate::recent::Recent;

const TOKEN: &str = "s3cret-T0ken_for.tests~";

struct Served {
    router: Router,
    metrics: Metrics,
    recent: crate::recent::SharedRecent,
}

/// A router over an empty store, ready (so `/readyz` answers 200), with
/// `TOKEN` when `token` and the given protections.
fn served(token: bool, protect_metrics: bool, protect_health: bool) -> Served {
    let metrics = Metrics::new().unwrap();
    metrics.assigned_partitions.set(1);
    let health = Arc::new(Health::default());
    health.model_warm.store(true, Ordering::Relaxed);
    let recent = Arc::new(Mutex::new(Recent::new(&UiConfig::default())));
    let server = ServerConfig {
        protect_metrics,
        protect_health,
        ..ServerConfig::default()
    };
    let token =
        token.then(|| ApiToken::load(&TokenSource::Env("T".into()), |_| Ok(TOKEN.into())).unwrap());
    Served {
        router: router(
            metrics.clone(),
            health,
            Some(crate::ui::Page {
                recent: recent.clone(),
                feedback: None,
                stop: tokio_util::sync::CancellationToken::new(),
            }),
            Access::new(token, &server),
        ),
        metrics,
        recent,
    }
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

impl Served {
    /// GET `path` with `authorization` as the header (if any).
    async fn get(&self, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = Request::get(path);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            challenge,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn refused(&self, endpoint: &str) -> u64 {
        self.metrics
            .http_unauthorized
            .with_label_values(&[endpoint])
            .get()
    }
}

const PAGE_AND_API: [&str; 7] = [
    "/",
    "/api/anomalies",
    "/api/anomalies?series=a&limit=5",
    "/api/series",
    "/api/series/web-01%2Fcpu",
    "/api/incidents?limit=5",
    "/api/incidents/host%3Dweb-1%401700000000000",
];
const HEALTH: [&str; 2] = ["/healthz", "/readyz"];

fn ok_status(path: &str) -> StatusCode {
    // A series or incident the empty store does not hold is a 404 once
    // through.
    if path.starts_with("/api/series/") || path.starts_with("/api/incidents/") {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn without_a_token_everything_is_open() {
    let s = served(false, false, false);
    for path in PAGE_AND_API.iter().chain(&HEALTH).chain(&["/metrics"]) {
        for auth in [None, Some("Bearer whatever")] {
            let a = s.get(path, auth).await;
            assert_eq!(a.status, ok_status(path), "{path} {auth:?}: {}", a.body);
            assert!(a.challenge.is_none());
        }
    }
    let page = s.get("/", None).await;
    assert!(page.body.contains("Recent anomalies"), "the page itself");
    assert_eq!(s.get("/nope", None).await.status, StatusCode::NOT_FOUND);
    assert!(Endpoint::ALL.iter().all(|e| s.refused(e.as_str()) == 0));
}

#[tokio::test]
async fn incidents_are_listed_and_have_an_address_of_their_own() {
    use crate::flow::incident::{Event, Incident, Member, Observation};
    use std::collections::BTreeMap;
    let s = served(false, false, false);
    let strongest = Observation {
        series: "web-1/cpu".into(),
        labels: Arc::new(BTreeMap::new()),
        ts: 1_700_000_000_000,
        anomaly: true,
        score: 4.0,
        why: "value 97 where 20 was expected".into(),
        page_id: Some(3),
    };
    let inc = Incident {
        id: "host=web-1@1700000000000".into(),
        group: BTreeMap::from([("host".to_string(), "web-1".to_string())]),
        opened_ts: 1_700_000_000_000,
        last_ts: 1_700_000_300_000,
        members: BTreeMap::from([(
            Arc::<str>::from("web-1/cpu"),
            Member {
                first_ts: 1_700_000_000_000,
                score: 4.0,
            },
        )]),
        strongest,
    };
    // The address the Alertmanager annotation and the incidents topic give.
    let link = inc.link("http://127.0.0.1:9898/").unwrap();
    assert_eq!(
        link,
        "http://127.0.0.1:9898/#incident=host%3Dweb-1%401700000000000"
    );
    s.recent.lock().unwrap().incident_event(&Event::Open(inc));
    let list = s.get("/api/incidents", None).await;
    assert_eq!(list.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(v[0]["id"], "host=web-1@1700000000000");
    assert_eq!(v[0]["state"], "open");
    assert_eq!(v[0]["members"][0]["series"], "web-1/cpu");
    assert_eq!(v[0]["strongest"]["anomaly"], 3);
    let one = s
        .get("/api/incidents/host%3Dweb-1%401700000000000", None)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    let v: serde_json::Value = serde_json::from_str(&one.body).unwrap();
    assert_eq!(v["strongest"]["why"], "value 97 where 20 was expected");
    let page = s.get("/", None).await;
    assert!(page.body.contains("Incidents") && page.body.contains("#incident="));
}

#[tokio::test]
async fn with_a_token_the_page_and_the_api_need_it() {
    let s = served(true, false, false);
    let right = bearer(TOKEN);
    let wrong = bearer("s3cret-T0ken_for.tests!");
    let prefix = bearer(&TOKEN[..TOKEN.len() - 1]);
    let longer = bearer(&format!("{TOKEN}{TOKEN}"));
    let mut refused = 0;
    for path in PAGE_AND_API {
        // No header, another scheme, a wrong, shorter or longer token: 401.
        for auth in [
            None,
            Some("Basic czNjcmV0"),
            Some("Bearer"),
            Some(wrong.as_str()),
            Some(prefix.as_str()),
            Some(longer.as_str()),
        ] {
            let a = s.get(path, auth).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            let challenge = a.challenge.unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(
                challenge.contains("invalid_token"),
                auth.is_some_and(|a| a.starts_with("Bearer ")),
                "{path} {auth:?}: {challenge}"
            );
            assert!(!a.body.contains(TOKEN));
            refused += 1;
        }
        // The right token, whatever the scheme's case: through.
        for auth in [right.clone(), format!("bearer  {TOKEN} ")] {
            let a = s.get(path, Some(&auth)).await;
            assert_eq!(a.status, ok_status(path), "{path}: {}", a.body);
            assert!(a.challenge.is_none());
        }
    }
    assert_eq!(s.refused("page") + s.refused("api"), refused);
    assert_eq!(s.refused("page"), 6);
    // The refused page is the one that asks for the token; the page itself
    // comes with it.
    let unlock = s.get("/", None).await;
    assert!(unlock.body.contains("id=\"unlock\""), "{}", unlock.body);
    assert!(!unlock.body.contains("Recent anomalies"));
    let page = s.get("/", Some(&right)).await;
    assert!(page.body.contains("Recent anomalies"));
    // Any other path needs it too (then it is a 404).
    assert_eq!(s.get("/nope", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.get("/nope", Some(&right)).await.status,
        StatusCode::NOT_FOUND
    );
    // /metrics and the health endpoints stay open by default, and count the
    // refusals without a per-request label.
    for path in HEALTH.iter().chain(&["/metrics"]) {
        assert_eq!(s.get(path, None).await.status, StatusCode::OK, "{path}");
    }
    let metrics = s.get("/metrics", None).await.body;
    assert!(
        metrics.contains(&format!(
            "attnwatch_http_unauthorized_total{{endpoint=\"page\"}} {}",
            s.refused("page")
        )),
        "{metrics}"
    );
    assert!(metrics.contains("attnwatch_http_unauthorized_total{endpoint=\"metrics\"} 0"));
}

#[tokio::test]
async fn metrics_and_health_follow_their_settings() {
    let right = bearer(TOKEN);
    for (protect_metrics, protect_health) in [(true, false), (false, true), (true, true)] {
        let s = served(true, protect_metrics, protect_health);
        for (paths, protected, label) in [
            (&["/metrics"][..], protect_metrics, "metrics"),
            (&HEALTH[..], protect_health, "health"),
        ] {
            for path in paths {
                let a = s.get(path, None).await;
                let want = if protected {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::OK
                };
                assert_eq!(a.status, want, "{path} {protect_metrics} {protect_health}");
                assert_eq!(a.challenge.is_some(), protected);
                let wrong = s.get(path, Some("Bearer nope")).await;
                assert_eq!(wrong.status, want, "{path}");
                let a = s.get(path, Some(&right)).await;
                assert_eq!(a.status, StatusCode::OK, "{path}");
            }
            let expect = if protected { 2 * paths.len() as u64 } else { 0 };
            assert_eq!(s.refused(label), expect, "{label}");
        }
        // The page and the API need the token either way.
        assert_eq!(
            s.get("/api/series", None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}
