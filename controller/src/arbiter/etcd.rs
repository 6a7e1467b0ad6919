//! The etcd client on a thread of its own: a current-thread tokio runtime runs
//! `etcd-client`'s futures one request at a time, and the rest of remusd (threads) calls the
//! typed, synchronous methods of [`Etcd`], each bounded by a timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Sender};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse,
};
use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum ArbiterError {
    #[error("cannot reach etcd at {endpoints}: {why}")]
    Unreachable { endpoints: String, why: String },
    #[error("etcd at {endpoints}: the lease {lease:x} is gone (expired or revoked)")]
    LeaseGone { endpoints: String, lease: i64 },
    #[error("etcd at {endpoints} refused the request: {why}")]
    Refused { endpoints: String, why: String },
    #[error("the etcd client thread is gone: {0}")]
    Thread(String),
}

/// A lease etcd granted: its id and the TTL it counts (etcd may raise the one asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub lease: i64,
    pub ttl: Duration,
}

/// What an attempt to take the leader key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The key was absent and is ours now; `extra` is the value of the key read in the same
    /// transaction, if it exists.
    Won { extra: Option<Vec<u8>> },
    /// Someone holds it (its value and lease).
    Held { value: Vec<u8>, lease: i64 },
}

enum Request {
    Grant {
        ttl_s: i64,
    },
    KeepAlive {
        lease: i64,
    },
    Revoke {
        lease: i64,
    },
    /// txn: if `key` is absent, put it under `lease` and run `then`; else read it.
    Acquire {
        key: String,
        value: Vec<u8>,
        lease: i64,
        then: Then,
    },
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// The member's status (a reachability check).
    Ping,
}

/// What the acquiring transaction does besides the put.
#[derive(Debug, Clone)]
pub enum Then {
    Nothing,
    /// Read this key ([`Acquire::Won::extra`]).
    Get(String),
}

enum Reply {
    Granted(Granted),
    /// The TTL left (0: the lease is gone).
    Renewed(i64),
    Done,
    Acquire(Acquire),
}

type Job = (Request, Sender<Result<Reply, ArbiterError>>);

/// A handle to the etcd client thread (cloneable; the thread ends with the last handle).
#[derive(Clone)]
pub struct Etcd {
    tx: Sender<Job>,
    endpoints: String,
    timeout: Duration,
}

impl Etcd {
    /// Starts the client thread for `endpoints`. Nothing is sent yet: an etcd that cannot be
    /// reached shows in the first request's error. `timeout` bounds every request.
    pub fn start(endpoints: Vec<String>, timeout: Duration) -> Result<Etcd, ArbiterError> {
        let text = endpoints.join(",");
        let (tx, rx) = bounded::<Job>(16);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ArbiterError::Thread(format!("cannot build its runtime: {e}")))?;
        let eps = text.clone();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let mut conn = Conn {
                    endpoints,
                    text: eps,
                    client: None,
                    keepers: HashMap::new(),
                };
                while let Ok((req, reply)) = rx.recv() {
                    let r = rt.block_on(async {
                        match tokio::time::timeout(timeout, conn.run(req)).await {
                            Ok(r) => r,
                            Err(_) => {
                                // A stream half-way through a keepalive is of no use now.
                                conn.keepers.clear();
                                Err(conn.unreachable(format!(
                                    "no answer within {} ms",
                                    timeout.as_millis()
                                )))
                            }
                        }
                    });
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| ArbiterError::Thread(e.to_string()))?;
        Ok(Etcd {
            tx,
            endpoints: text,
            timeout,
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn call(&self, req: Request) -> Result<Reply, ArbiterError> {
        let (rtx, rrx) = bounded(1);
        self.tx
            .send((req, rtx))
            .map_err(|e| ArbiterError::Thread(e.to_string()))?;
        // Queued behind at most a few other requests, each bounded by `timeout`.
        match rrx.recv_timeout(self.timeout * 4 + Duration::from_secs(1)) {
            Ok(r) => r,
            Err(e) => Err(ArbiterError::Unreachable {
                endpoints: self.endpoints.clone(),
                why: format!("the request did not finish: {e}"),
            }),
        }
    }

    /// Grants a lease of `ttl_s` seconds.
    pub fn grant(&self, ttl_s: i64) -> Result<Granted, ArbiterError> {
        match self.call(Request::Grant { ttl_s })? {
            Reply::Granted(g) => Ok(g),
            _ => Err(self.odd()),
        }
    }

    /// Renews `lease`; Ok with its new TTL, [`ArbiterError::LeaseGone`] when etcd no longer
    /// has it.
    pub fn keep_alive(&self, lease: i64) -> Result<Duration, ArbiterError> {
        match self.call(Request::KeepAlive { lease })? {
            Reply::Renewed(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            Reply::Renewed(_) => Err(ArbiterError::LeaseGone {
                endpoints: self.endpoints.clone(),
                lease,
            }),
            _ => Err(self.odd()),
        }
    }

    /// Revokes `lease` (its keys go with it). A lease already gone is not an error.
    pub fn revoke(&self, lease: i64) -> Result<(), ArbiterError> {
        match self.call(Request::Revoke { lease }) {
            Ok(_) | Err(ArbiterError::LeaseGone { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes `key` under `lease` if nobody holds it (one transaction, with `then`).
    pub fn acquire(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        then: Then,
    ) -> Result<Acquire, ArbiterError> {
        match self.call(Request::Acquire {
            key: key.into(),
            value,
            lease,
            then,
        })? {
            Reply::Acquire(a) => Ok(a),
            _ => Err(self.odd()),
        }
    }

    /// Whether etcd answers at all (its status).
    pub fn ping(&self) -> Result<(), ArbiterError> {
        self.call(Request::Ping).map(|_| ())
    }

    /// Puts `key` = `value` with no lease.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Result<(), ArbiterError> {
        self.call(Request::Put {
            key: key.into(),
            value,
        })
        .map(|_| ())
    }

    fn odd(&self) -> ArbiterError {
        ArbiterError::Thread("the etcd thread answered another request".into())
    }
}

struct Conn {
    endpoints: Vec<String>,
    text: String,
    client: Option<Client>,
    keepers: HashMap<i64, (LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Conn {
    fn unreachable(&self, why: String) -> ArbiterError {
        ArbiterError::Unreachable {
            endpoints: self.text.clone(),
            why,
        }
    }

    /// An error of `etcd-client`, by kind: a gRPC status from etcd is a refusal (a lease
    /// etcd does not know is [`ArbiterError::LeaseGone`]); anything else is a connection
    /// problem.
    fn error(&self, e: etcd_client::Error, lease: Option<i64>) -> ArbiterError {
        match e {
            etcd_client::Error::GRpcStatus(s) => match (s.code(), lease) {
                (tonic::Code::NotFound, Some(lease)) => ArbiterError::LeaseGone {
                    endpoints: self.text.clone(),
                    lease,
                },
                (
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown,
                    _,
                ) => self.unreachable(s.message().to_string()),
                _ => ArbiterError::Refused {
                    endpoints: self.text.clone(),
                    why: s.message().to_string(),
                },
            },
            other => self.unreachable(other.to_string()),
        }
    }

    async fn client(&mut self) -> Result<Client, ArbiterError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        let c = Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|e| self.error(e, None))?;
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn run(&mut self, req: Request) -> Result<Reply, ArbiterError> {
        let mut c = self.client().await?;
        match req {
            Request::Grant { ttl_s } => {
                let g = c
                    .lease_grant(ttl_s, None)
                    .await
                    .map_err(|e| self.error(e, None))?;
                Ok(Reply::Granted(Granted {
                    lease: g.id(),
                    ttl: Duration::from_secs(g.ttl().max(0) as u64),
                }))
            }
            Request::KeepAlive { lease } => {
                if !self.keepers.contains_key(&lease) {
                    let ks = c
                        .lease_keep_alive(lease)
                        .await
                        .map_err(|e| self.error(e, Some(lease)))?;
                    self.keepers.insert(lease, ks);
                }
                let sent = {
                    let (keeper, stream) = self.keepers.get_mut(&lease).expect("inserted above");
                    match keeper.keep_alive().await {
                        Ok(()) => stream.message().await,
                        Err(e) => Err(e),
                    }
                };
                match sent {
                    Ok(Some(r)) => Ok(Reply::Renewed(r.ttl())),
                    Ok(None) => {
                        self.keepers.remove(&lease);
                        Err(self.unreachable("the keepalive stream ended".into()))
                    }
                    Err(e) => {
                        self.keepers.remove(&lease);
                        Err(self.error(e, Some(lease)))
                    }
                }
            }
            Request::Revoke { lease } => {
                self.keepers.remove(&lease);
                c.lease_revoke(lease)
                    .await
                    .map_err(|e| self.error(e, Some(lease)))?;
                Ok(Reply::Done)
            }
            Request::Acquire {
                key,
                value,
                lease,
                then,
            } => {
                let mut ops = vec![TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )];
                match &then {
                    Then::Nothing => {}
                    Then::Get(k) => ops.push(TxnOp::get(k.clone(), None)),
                }
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(ops)
                    .or_else(vec![TxnOp::get(key, None)]);
                let r = c.txn(txn).await.map_err(|e| self.error(e, Some(lease)))?;
                let gets: Vec<_> = r
                    .op_responses()
                    .into_iter()
                    .filter_map(|o| match o {
                        TxnOpResponse::Get(g) => Some(g),
                        _ => None,
                    })
                    .collect();
                let first = gets.first().and_then(|g| g.kvs().first());
                if r.succeeded() {
                    Ok(Reply::Acquire(Acquire::Won {
                        extra: first.map(|kv| kv.value().to_vec()),
                    }))
                } else {
                    match first {
                        Some(kv) => Ok(Reply::Acquire(Acquire::Held {
                            value: kv.value().to_vec(),
                            lease: kv.lease(),
                        })),
                        // Gone between the compare and the read: try again.
                        None => Ok(Reply::Acquire(Acquire::Held {
                            value: Vec::new(),
                            lease: 0,
                        })),
                    }
                }
            }
            Request::Put { key, value } => {
                c.put(key, value, None)
                    .await
                    .map_err(|e| self.error(e, None))?;
                Ok(Reply::Done)
            }
            Request::Ping => {
                c.status().await.map_err(|e| self.error(e, None))?;
                Ok(Reply::Done)
            }
        }
    }
}

/// When a lease granted or renewed by a request sent at `sent` is certainly still valid by
/// this host's clock: `ttl` after the send, less the safety margin.
pub fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(super::config::safety_margin(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_that_does_not_answer_is_named() {
        // Nothing listens there: bound a moment ago, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let e = Etcd::start(vec![url.clone()], Duration::from_millis(500)).unwrap();
        let err = e.grant(2).unwrap_err();
        assert!(matches!(err, ArbiterError::Unreachable { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach etcd at {url}")),
            "{err}"
        );
        assert!(e.keep_alive(1).is_err());
    }
}
