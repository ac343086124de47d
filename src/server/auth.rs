//! Access control of the HTTP server: an optional bearer token
//! (`Authorization: Bearer <token>`) on the web page `/`, its JSON API
//! `/api/*` and any other path, and, each when configured, on `/metrics`
//! and on the health endpoints `/healthz` and `/readyz`.
//!
//! The token is read once at startup from the file or the environment
//! variable that `[server]` names ([`ApiToken::load`]). It is never part of
//! the config, and no log line, error or `Debug` output shows it. A
//! presented token is compared in constant time ([`constant_time_eq`]).
//! An unauthorized request gets 401 with a `WWW-Authenticate: Bearer`
//! header and is counted in `attnwatch_http_unauthorized_total{endpoint}`;
//! it is not logged. For `/`, the 401's body is the small page
//! ([`crate::ui::UNLOCK`]) that asks the browser for the token and then
//! loads the real page with it.
//!
//! It does not own the routes ([`super`]) or the page ([`crate::ui`]).

use std::env::VarError;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::{ServerConfig, TokenSource};
use crate::metrics::Metrics;

/// The longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The `realm` of the `WWW-Authenticate` challenge.
const REALM: &str = "attnwatch";

/// Why the API token could not be read (fatal at startup). No variant
/// holds or prints the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the API token file {path} (server.token_file)")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The environment variable is not set.
    #[error("the API token's environment variable {var} (server.token_env) is not set")]
    Unset {
        /// The variable.
        var: String,
    },
    /// The token is empty (or only whitespace).
    #[error("the API token from {from} is empty")]
    Empty {
        /// Where it was read from.
        from: TokenSource,
    },
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("the API token from {from} is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong {
        /// Where it was read from.
        from: TokenSource,
    },
    /// The token has bytes that a header value cannot carry unchanged.
    #[error(
        "the API token from {from} has characters other than printable ASCII \
         without spaces, which an Authorization header cannot carry"
    )]
    BadCharacters {
        /// Where it was read from.
        from: TokenSource,
    },
}

/// The API token. Its `Debug` output is redacted; it has no `Display`.
#[derive(Clone)]
pub struct ApiToken(Box<[u8]>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Read the token from `source`: a file (through the file system) or an
    /// environment variable (through `env`, `std::env::var` in the
    /// service). Surrounding whitespace is dropped; what remains must be
    /// 1 to [`MAX_TOKEN_BYTES`] bytes of printable ASCII without spaces.
    pub fn load(
        source: &TokenSource,
        env: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<ApiToken, TokenError> {
        let raw = match source {
            TokenSource::File(path) => read_capped(path)?,
            TokenSource::Env(var) => match env(var) {
                Ok(v) => v.into_bytes(),
                Err(VarError::NotPresent) => return Err(TokenError::Unset { var: var.clone() }),
                // Not UTF-8, so not printable ASCII either.
                Err(VarError::NotUnicode(_)) => {
                    return Err(TokenError::BadCharacters {
                        from: source.clone(),
                    })
                }
            },
        };
        Self::parse(&raw, source)
    }

    /// The token `[server]` names, read with the process environment;
    /// `None` when it names none.
    pub fn from_config(server: &ServerConfig) -> Result<Option<ApiToken>, TokenError> {
        server
            .token_source()
            .map(|source| Self::load(&source, |var| std::env::var(var)))
            .transpose()
    }

    fn parse(raw: &[u8], from: &TokenSource) -> Result<ApiToken, TokenError> {
        let token = raw.trim_ascii();
        if token.is_empty() {
            return Err(TokenError::Empty { from: from.clone() });
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { from: from.clone() });
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(TokenError::BadCharacters { from: from.clone() });
        }
        Ok(ApiToken(token.into()))
    }

    /// Whether `presented` is this token (constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(presented, &self.0)
    }
}

/// Read at most [`MAX_TOKEN_BYTES`] and some whitespace of `path` (a
/// larger file is not read whole).
fn read_capped(path: &Path) -> Result<Vec<u8>, TokenError> {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::fs::File::open(path)?
            .take(2 * MAX_TOKEN_BYTES as u64 + 2)
            .read_to_end(&mut buf)?;
        Ok(buf)
    };
    read().map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `presented` equals `expected`, in a time that depends only on
/// the length of `presented`, which the caller already knows: every byte
/// of `presented` is compared with `expected` repeated to its length, the
/// differences are OR-ed together without an early exit, and a length
/// mismatch is folded into the same result at the end. Neither the
/// position of the first differing byte nor the length of `expected`
/// shows in the time taken.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let presented = std::hint::black_box(presented);
    let n = expected.len();
    let mut diff = 0u8;
    if n > 0 {
        for (i, &b) in presented.iter().enumerate() {
            diff |= b ^ expected[i % n];
        }
    }
    // 1 when the lengths differ (or when nothing could be compared), else
    // 0, without a branch on the lengths.
    let len = (presented.len() ^ n) as u64 | u64::from(n == 0);
    let len_differs = ((len | len.wrapping_neg()) >> 63) as u8;
    std::hint::black_box(diff | len_differs) == 0
}

/// What a request's path belongs to: which setting protects it, and the
/// `endpoint` label of `attnwatch_http_unauthorized_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: the web page.
    Page,
    /// `/api/*`, and every path not named here (a 404 included).
    Api,
    /// `/metrics`.
    Metrics,
    /// `/healthz` and `/readyz`.
    Health,
}

impl Endpoint {
    /// Every endpoint, for pre-registering the metric.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Page,
        Endpoint::Api,
        Endpoint::Metrics,
        Endpoint::Health,
    ];

    /// The endpoint of `path`. Unknown paths count as the API, so that a
    /// route added later is protected by default.
    pub fn of(path: &str) -> Endpoint {
        match path {
            "/" => Endpoint::Page,
            "/metrics" => Endpoint::Metrics,
            "/healthz" | "/readyz" => Endpoint::Health,
            _ => Endpoint::Api,
        }
    }

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Page => "page",
            Endpoint::Api => "api",
            Endpoint::Metrics => "metrics",
            Endpoint::Health => "health",
        }
    }
}

/// Which endpoints need the token, and the token.
#[derive(Debug, Clone, Default)]
pub struct Access {
    token: Option<Arc<ApiToken>>,
    protect_metrics: bool,
    protect_health: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the one.
    Invalid,
}

impl Access {
    /// No token: every endpoint is open.
    pub fn open() -> Access {
        Access::default()
    }

    /// `token` (if any) on the page and the API, and on `/metrics` and the
    /// health endpoints as `server` says.
    pub fn new(token: Option<ApiToken>, server: &ServerConfig) -> Access {
        Access {
            token: token.map(Arc::new),
            protect_metrics: server.protect_metrics,
            protect_health: server.protect_health,
        }
    }

    /// Read the token `server` names (process environment) and build the
    /// access rules.
    pub fn from_config(server: &ServerConfig) -> Result<Access, TokenError> {
        Ok(Access::new(ApiToken::from_config(server)?, server))
    }

    /// Whether a request to `endpoint` must carry the token.
    pub fn requires_token(&self, endpoint: Endpoint) -> bool {
        self.token.is_some()
            && match endpoint {
                Endpoint::Page | Endpoint::Api => true,
                Endpoint::Metrics => self.protect_metrics,
                Endpoint::Health => self.protect_health,
            }
    }

    /// One line for the log and `check-config`: what needs the token (never
    /// the token).
    pub fn describe(&self) -> String {
        if self.token.is_none() {
            return "no API token: every endpoint is open".into();
        }
        let state = |e| {
            if self.requires_token(e) {
                "token required"
            } else {
                "open"
            }
        };
        format!(
            "API token set: / and /api/*: token required; /metrics: {}; /healthz, /readyz: {}",
            state(Endpoint::Metrics),
            state(Endpoint::Health)
        )
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = bearer(headers).ok_or(Denied::Missing)?;
        if token.matches(presented) {
            Ok(())
        } else {
            Err(Denied::Invalid)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive), or `None`.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let at = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(at);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// The middleware's state.
#[derive(Debug, Clone)]
pub(super) struct Guard {
    /// The rules.
    pub access: Access,
    /// Where refusals are counted.
    pub metrics: Metrics,
}

/// The middleware: pass the request on, or answer 401.
pub(super) async fn guard(State(g): State<Guard>, request: Request, next: Next) -> Response {
    let endpoint = Endpoint::of(request.uri().path());
    if !g.access.requires_token(endpoint) {
        return next.run(request).await;
    }
    match g.access.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            // Counted, not logged: a scan must not flood the log.
            g.metrics
                .http_unauthorized
                .with_label_values(&[endpoint.as_str()])
                .inc();
            unauthorized(endpoint, denied)
        }
    }
}

/// 401 with the Bearer challenge (RFC 6750); for the page, the page that
/// asks for the token.
fn unauthorized(endpoint: Endpoint, denied: Denied) -> Response {
    let challenge = match denied {
        Denied::Missing => format!("Bearer realm=\"{REALM}\""),
        Denied::Invalid => format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""),
    };
    let challenge =
        HeaderValue::from_str(&challenge).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    let headers = [
        (header::WWW_AUTHENTICATE, challenge),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    if endpoint == Endpoint::Page {
        let html = HeaderValue::from_static("text/html; charset=utf-8");
        (
            StatusCode::UNAUTHORIZED,
            headers,
            [(header::CONTENT_TYPE, html)],
            crate::ui::UNLOCK,
        )
            .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            headers,
            "unauthorized: send Authorization: Bearer <token>\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
        for other in [
            &b""[..],
            b"s",
            b"s3cret-toke",
            b"s3cret-tokenX",
            b"X3cret-token",
            b"s3cret-tokeX",
            b"S3CRET-TOKEN",
            // The expected token repeated: every byte matches the
            // repetition, only the length differs.
            b"s3cret-tokens3cret-token",
        ] {
            assert!(!constant_time_eq(other, b"s3cret-token"), "{other:?}");
        }
        assert!(
            !constant_time_eq(b"a", b""),
            "nothing matches an empty token"
        );
        assert!(!constant_time_eq(b"", b""));
        // Every single-bit difference at every position is seen.
        let t = b"abcdefgh";
        for i in 0..t.len() {
            for bit in 0..8 {
                let mut x = *t;
                x[i] ^= 1 << bit;
                assert!(!constant_time_eq(&x, t));
            }
        }
    }

    fn env_with(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| {
            pairs
                .iter()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.clone())
                .ok_or(VarError::NotPresent)
        }
    }

    #[test]
    fn token_from_env_or_file_trimmed_and_checked_without_showing_it() {
        let secret = "tOk3n-Very_Secret.value~";
        let env = env_with(&[
            ("API_TOKEN", secret),
            ("EMPTY", "  \n"),
            ("SPACES", "two words"),
        ]);
        let t = ApiToken::load(&TokenSource::Env("API_TOKEN".into()), &env).unwrap();
        assert!(t.matches(secret.as_bytes()));
        assert!(!format!("{t:?}").contains(secret));

        let dir = std::env::temp_dir().join(format!("attnwatch-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let t = ApiToken::load(&TokenSource::File(file.clone()), &env).unwrap();
        assert!(
            t.matches(secret.as_bytes()),
            "the trailing newline is dropped"
        );

        let errors = [
            ApiToken::load(&TokenSource::Env("UNSET".into()), &env).unwrap_err(),
            ApiToken::load(&TokenSource::Env("EMPTY".into()), &env).unwrap_err(),
            ApiToken::load(&TokenSource::Env("SPACES".into()), &env).unwrap_err(),
            ApiToken::load(&TokenSource::File(dir.join("missing")), &env).unwrap_err(),
            {
                std::fs::write(&file, "x".repeat(MAX_TOKEN_BYTES + 1)).unwrap();
                ApiToken::load(&TokenSource::File(file.clone()), &env).unwrap_err()
            },
            {
                std::fs::write(&file, format!("{secret}\u{e9}")).unwrap();
                ApiToken::load(&TokenSource::File(file.clone()), &env).unwrap_err()
            },
        ];
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].contains("UNSET") && text[0].contains("not set"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains("EMPTY") && text[1].contains("empty"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("printable ASCII"), "{}", text[2]);
        assert!(text[3].contains("missing"), "{}", text[3]);
        assert!(text[4].contains("longer than 4096"), "{}", text[4]);
        assert!(text[5].contains("printable ASCII"), "{}", text[5]);
        for t in &text {
            assert!(!t.contains(secret) && !t.contains("two words"), "{t}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_map_to_endpoints_and_unknown_paths_are_the_api() {
        assert_eq!(Endpoint::of("/"), Endpoint::Page);
        assert_eq!(Endpoint::of("/api/anomalies"), Endpoint::Api);
        assert_eq!(Endpoint::of("/metrics"), Endpoint::Metrics);
        assert_eq!(Endpoint::of("/healthz"), Endpoint::Health);
        assert_eq!(Endpoint::of("/readyz"), Endpoint::Health);
        assert_eq!(Endpoint::of("/metrics/"), Endpoint::Api);
        assert_eq!(Endpoint::of("/index.html"), Endpoint::Api);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_not_bearer() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&h("bearer   abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&h("Basic YWJjOmRlZg==")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
