//! A headless Chromium (Debian's `chromium`, installed by `scripts/setup`)
//! driven over the DevTools protocol, for the page's browser tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::common::unique;

/// A headless Chromium driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    /// A browser with a 1400 x 1000 window, at `url`.
    pub fn open(url: &str) -> Self {
        let mut b = Browser::launch();
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        b.call("Page.navigate", json!({ "url": url }));
        b
    }

    pub fn launch() -> Self {
        let profile = std::env::temp_dir().join(unique("attnwatch-chromium"));
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium not found: scripts/setup installs Debian's chromium");
        // Chromium prints its DevTools endpoint on stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium printed no DevTools endpoint within 60 s");
        let (ws, _) = tungstenite::connect(endpoint.as_str()).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: TempDir(profile),
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Send a command (to the page once attached) and wait for its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let Message::Text(t) = self.ws.read().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluate `expression` until `ok` holds (deadline-bounded).
    pub fn wait_for(&mut self, expression: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expression);
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out: {expression} = {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn screenshot(&mut self, path: &std::path::Path) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
        path.to_path_buf()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real mouse click in the middle of the element `selector`.
pub fn click(b: &mut Browser, selector: &str) -> Value {
    let rect = b.eval(&format!(
        "JSON.stringify((() => {{ const e = document.querySelector({selector:?}); const r = e.getBoundingClientRect(); \
         return {{x: r.x + r.width / 2, y: r.y + r.height / 2, id: e.dataset.id}}; }})())"
    ));
    let rect: Value = serde_json::from_str(rect.as_str().unwrap()).unwrap();
    for kind in ["mousePressed", "mouseReleased"] {
        b.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1}),
        );
    }
    rect
}

/// Type `text` into the input `id` (replacing what it holds).
pub fn type_into(b: &mut Browser, id: &str, text: &str) {
    b.eval(&format!(
        "(() => {{ const e = document.getElementById({id:?}); e.value = ''; e.focus(); return true; }})()"
    ));
    b.call("Input.insertText", json!({ "text": text }));
}
