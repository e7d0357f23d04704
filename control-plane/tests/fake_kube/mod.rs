//! A Kubernetes API server for the one thing a real one cannot do on
//! demand: expire a watch (410 Gone) so the client must relist. It speaks
//! the list/watch wire protocol (resourceVersion, ADDED/MODIFIED/DELETED,
//! bookmarks, 410 Gone) for ConfigMaps and Services — enough to drive the
//! real kube-rs client; everything else is tested against kube-apiserver.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Collections the fake lists and watches, by URL path.
const COLLECTIONS: [(&str, &str, &str); 2] = [
    ("/api/v1/configmaps", "v1", "ConfigMap"),
    ("/api/v1/services", "v1", "Service"),
];

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// Every change: its resource version, type and object.
    history: Vec<(u64, &'static str, Value)>,
    /// Open watches and the label selector each asked for.
    watchers: Vec<(mpsc::Sender<Bytes>, Option<String>)>,
    /// The next watch is answered with 410 Gone.
    expire_next_watch: bool,
}

#[derive(Default)]
struct World {
    version: u64,
    collections: HashMap<&'static str, Collection>,
    lists: HashMap<&'static str, usize>,
    gone_served: usize,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeKube {
    world: Arc<Mutex<World>>,
    /// Its URL.
    pub url: String,
}

impl FakeKube {
    /// Starts one on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        let fake = Self {
            world: Arc::new(Mutex::new(World {
                version: 100,
                ..World::default()
            })),
            url: format!("http://{address}"),
        };
        let serving = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fake = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.answer(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    /// A kube client talking to this fake.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces `object` in the collection at `path`.
    pub fn apply(&self, path: &'static str, mut object: Value) {
        let mut world = self.lock();
        world.version += 1;
        let version = world.version;
        let key = key_of(&object);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.0, key.1));
        }
        let collection = world.collections.entry(path).or_default();
        let kind = if collection.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.history.push((version, kind, object.clone()));
        broadcast(collection, kind, &object);
    }

    /// Deletes an object from the collection at `path`.
    pub fn delete(&self, path: &'static str, namespace: &str, name: &str) {
        let mut world = self.lock();
        world.version += 1;
        let version = world.version;
        let collection = world.collections.entry(path).or_default();
        if let Some(mut object) = collection
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            collection
                .history
                .push((version, "DELETED", object.clone()));
            broadcast(collection, "DELETED", &object);
        }
    }

    /// Ends every open watch of `path` and answers the next one with 410
    /// Gone, as an API server does once its watch cache has moved on.
    pub fn expire_watches(&self, path: &'static str) {
        let mut world = self.lock();
        let collection = world.collections.entry(path).or_default();
        collection.watchers.clear();
        collection.expire_next_watch = true;
    }

    /// Times `path` was listed, and 410 answers given.
    pub fn lists(&self, path: &'static str) -> (usize, usize) {
        let world = self.lock();
        (
            world.lists.get(path).copied().unwrap_or(0),
            world.gone_served,
        )
    }

    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let query = parse_query(request.uri().query().unwrap_or(""));
        if request.method() == Method::GET
            && let Some(&(collection, api_version, kind)) =
                COLLECTIONS.iter().find(|(p, _, _)| *p == path)
        {
            let selector = query.get("labelSelector").cloned();
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return self.watch(collection, api_version, kind, selector, since);
            }
            return self.list(collection, api_version, kind, selector.as_deref());
        }
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        )
    }

    fn list(
        &self,
        collection: &'static str,
        api_version: &str,
        kind: &str,
        selector: Option<&str>,
    ) -> Response<Body> {
        let mut world = self.lock();
        *world.lists.entry(collection).or_default() += 1;
        let version = world.version;
        let items: Vec<Value> = world
            .collections
            .get(collection)
            .map(|c| {
                c.objects
                    .values()
                    .filter(|o| selects(selector, o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": { "resourceVersion": version.to_string() },
                "items": items,
            }),
        )
    }

    fn watch(
        &self,
        collection: &'static str,
        api_version: &str,
        kind: &str,
        selector: Option<String>,
        since: u64,
    ) -> Response<Body> {
        let (sender, receiver) = mpsc::channel::<Bytes>(1024);
        let mut world = self.lock();
        let version = world.version;
        let entry = world.collections.entry(collection).or_default();
        if std::mem::take(&mut entry.expire_next_watch) {
            let gone = json!({
                "type": "ERROR",
                "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {since}"),
                },
            });
            let _ = sender.try_send(line(&gone));
            drop(sender);
            world.gone_served += 1;
        } else {
            for (_, change, object) in entry.history.iter().filter(|(v, _, _)| *v > since) {
                if selects(selector.as_deref(), object) {
                    let _ = sender.try_send(line(&json!({ "type": change, "object": object })));
                }
            }
            let bookmark = json!({
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": api_version, "kind": kind,
                    "metadata": { "resourceVersion": version.to_string() },
                },
            });
            let _ = sender.try_send(line(&bookmark));
            entry.watchers.push((sender, selector));
        }
        let frames = tokio_stream_of(receiver).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn broadcast(collection: &mut Collection, change: &str, object: &Value) {
    let event = line(&json!({ "type": change, "object": object }));
    collection.watchers.retain(|(sender, selector)| {
        if !selects(selector.as_deref(), object) {
            return !sender.is_closed();
        }
        sender.try_send(event.clone()).is_ok()
    });
}

fn tokio_stream_of(receiver: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (bytes, receiver))
    })
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("json");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn key_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Whether `object` matches a label selector of `key`, `key=value` terms.
fn selects(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((key, value)) => labels[key].as_str() == Some(value),
        None => !labels[term].is_null(),
    })
}

fn parse_query(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
        }),
    )
}
