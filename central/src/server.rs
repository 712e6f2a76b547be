//! The wiring: builds the engine's state ([`Central`]), binds the listeners, starts the channels
//! (gRPC, console, chat surfaces) and the background tasks (event delivery, expiry, audit
//! maintenance), and shuts them down.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use latch_proto::v1::{
    agent_service_server::AgentServiceServer, reviewer_service_server::ReviewerServiceServer,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch, Notify},
    task::JoinHandle,
};

use crate::{
    api::{AgentApi, ReviewerApi},
    auth::{AgentTokens, Authenticator},
    clock::now_ms,
    config::Config,
    engine::{rule_cache::RuleCache, Central},
    error::Result,
    events::{Event, Hub, Publisher, CHANNEL},
    store::{Backend, Store, StoreError},
};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// PostgreSQL `LISTEN`.
    #[error("cannot listen for replica notifications: {0}")]
    Listen(crate::store::StoreError),
    /// Server reflection.
    #[error("cannot build server reflection: {0}")]
    Reflection(String),
    /// The audit signing key.
    #[error("audit signing key: {0}")]
    Key(#[from] crate::chain::KeyError),
    /// The `[oidc]` settings.
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcSetupError),
    /// The `[slack]` or `[teams]` settings.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    /// The `[[auto_reviewers]]` settings.
    #[error(transparent)]
    AutoReview(#[from] crate::autoreview::AutoReviewError),
    /// Recording the start in the audit trail.
    #[error("recording the start in the audit trail: {0}")]
    Audit(#[from] crate::error::Error),
    /// A `[tls]` file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The console's listener or the `[web]` table.
    #[error(transparent)]
    Web(#[from] crate::web::WebSetupError),
}

/// A started service.
pub struct Server {
    addr: SocketAddr,
    central: Arc<Central>,
    tasks: Vec<JoinHandle<()>>,
    serve: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    shutdown: Option<oneshot::Sender<()>>,
    web: Option<crate::web::WebServer>,
    metrics_addr: Option<SocketAddr>,
}

/// Starts the service with `config`, listening on `listener` when given (tests pass one bound
/// to port 0), else on `config.listen`.
pub async fn start(config: &Config, listener: Option<TcpListener>) -> Result<Server, StartError> {
    // The identity provider when `[oidc]` is configured, static tokens when any are.
    let authenticator = crate::oidc::ReviewerAuth::from_config(config)?;
    let oidc = authenticator.oidc().cloned();
    let server = start_serving(config, listener, Arc::new(authenticator), oidc).await?;
    server.central.announce_reviewer_auth(config).await?;
    Ok(server)
}

/// [`start`] with another reviewer [`Authenticator`]. The console's sign-in at an identity
/// provider is off: it needs the provider [`start`] builds from `[oidc]`.
pub async fn start_with(
    config: &Config,
    listener: Option<TcpListener>,
    reviewers: Arc<dyn Authenticator>,
) -> Result<Server, StartError> {
    start_serving(config, listener, reviewers, None).await
}

/// Starts the service; `oidc` is the provider behind `reviewers`, for the login flows central
/// runs itself (the console's).
async fn start_serving(
    config: &Config,
    listener: Option<TcpListener>,
    reviewers: Arc<dyn Authenticator>,
    oidc: Option<Arc<crate::oidc::Oidc>>,
) -> Result<Server, StartError> {
    // TLS files first: a bad certificate should stop the start before anything is opened.
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(crate::tls::ServerTls::load(t)?)),
        None => None,
    };
    // The console's address is part of its settings (links, redirect URI): bind it first.
    let web = crate::web::bind(config).await?;
    let signing = crate::chain::load_or_create_signing_key(&config.signing_key_path())?;
    let store = Store::open(&config.database, config.max_connections).await?;
    let replica_id = config.replica_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "central".into());
        format!("{host}-{}", std::process::id())
    });
    let mut tasks = Vec::new();
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let mut pg_listener = None;
    let publisher = match store.backend() {
        Backend::Sqlite => Publisher::Local(local_tx),
        Backend::Postgres => {
            pg_listener = Some(store.listen(CHANNEL).await.map_err(StartError::Listen)?);
            Publisher::Postgres(store.clone())
        }
    };
    let (notify, notify_jobs) = crate::notify::Notifier::start(config)?;
    let notify = Arc::new(notify);
    let (auto_reviewers, auto_jobs) = crate::autoreview::AutoReviewers::start(config)?;
    let central = Arc::new(Central {
        store: store.clone(),
        hub: Hub::default(),
        publisher,
        rules: RuleCache::default(),
        reviewers,
        oidc,
        agents: AgentTokens::new(&config.agents),
        replica_id,
        expiry_wake: Notify::new(),
        stopping: watch::channel(false).0,
        signing,
        audit_config: config.audit.clone(),
        tls: tls.clone(),
        identity_log: Default::default(),
        break_glass: config.break_glass.clone(),
        chat: notify.queue(),
        web: web.as_ref().map(|w| w.settings()).unwrap_or_default(),
        metrics: crate::metrics::Metrics::new(),
        breakers: crate::breaker::Breakers::new(&config.auto_reviewers),
        delivered: Default::default(),
        auto_queue: auto_jobs.as_ref().map(|(tx, _)| tx.clone()),
    });
    if let Some(w) = central.store.writer_stats() {
        w.observe(Arc::new(CommitMetrics(central.metrics.clone())));
    }
    central.record_start(config).await?;
    if let Some((_, jobs)) = auto_jobs {
        tasks.push(tokio::spawn(crate::autoreview::run(
            central.clone(),
            Arc::new(auto_reviewers),
            jobs,
        )));
    }
    if let Some(jobs) = notify_jobs {
        tasks.push(tokio::spawn(crate::notify::deliver(
            central.clone(),
            notify.clone(),
            jobs,
        )));
    }

    // Audit checkpoints and retention.
    {
        let c = central.clone();
        tasks.push(tokio::spawn(async move { c.audit_maintenance().await }));
    }

    // Event delivery.
    match pg_listener {
        None => {
            let c = central.clone();
            let mut rx = local_rx;
            tasks.push(tokio::spawn(async move {
                while let Some((e, snapshot)) = rx.recv().await {
                    c.dispatch(e, snapshot).await;
                }
            }));
        }
        Some(mut l) => {
            let c = central.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match l.next().await {
                        Ok(Some(payload)) => match serde_json::from_str::<Event>(&payload) {
                            Ok(e) => c.dispatch(e, None).await,
                            Err(e) => tracing::warn!(payload, error = %e, "bad notification"),
                        },
                        Ok(None) => tracing::warn!(
                            "lost the notification connection; reconnecting (agents catch up when they reconnect)"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "notification listener failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }));
        }
    }

    // Expiry.
    {
        let c = central.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = c.expire_due().await {
                    tracing::warn!(error = %e, "expiring requests failed");
                }
                // Wake at the next deadline, when a request due before the next look arrives
                // (see EXPIRY_POLL_MS), or at least every second (another replica may have
                // accepted a request).
                let wait = match c.next_expiry().await {
                    Ok(Some(t)) => (t - now_ms()).clamp(5, crate::engine::EXPIRY_POLL_MS),
                    _ => crate::engine::EXPIRY_POLL_MS,
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = c.expiry_wake.notified() => {}
                }
            }
        }));
    }

    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?,
    };
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    // Both versions of reflection: grpcurl, Postman and older grpc_cli speak only v1alpha.
    // Each lists both, so a client of either learns what the other offers.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(latch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(format!("v1: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(format!("v1alpha: {e}")))?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AgentServiceServer::new(AgentApi::new(central.clone())))
        .add_service(ReviewerServiceServer::new(ReviewerApi::new(
            central.clone(),
        )));
    let shutdown = async {
        let _ = shutdown_rx.await;
    };
    let serve = match &tls {
        // No Nagle: a unary reply leaves as several small writes, and holding the later ones
        // for the peer's delayed ACK adds ~40 ms to every call.
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )),
        Some(tls) => {
            let (incoming, accept) = crate::tls::incoming(listener, tls.clone());
            tasks.push(accept);
            tasks.push(tokio::spawn(crate::tls::watch_files(tls.clone())));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
    };
    tracing::info!(%addr, tls = tls.is_some(), client_certificates = central.agents_by_certificate(), replica = %central.replica_id, database = %crate::store::redact_url(store.url()), "latch-central serving");
    let web = match web {
        Some(w) => {
            // Slack's callbacks arrive on the console's listener.
            let chat = crate::notify::routes(central.clone(), &notify);
            Some(w.serve(central.clone(), chat)?)
        }
        None => None,
    };
    let metrics_addr = match config.metrics_listen {
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .map_err(|source| StartError::Bind { addr: at, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr: at, source })?;
            tasks.push(tokio::spawn(serve_metrics(l, central.clone())));
            tracing::info!(address = %bound, "serving /metrics");
            Some(bound)
        }
        None => None,
    };
    Ok(Server {
        addr,
        central,
        tasks,
        serve: Some(serve),
        shutdown: Some(shutdown_tx),
        web,
        metrics_addr,
    })
}

/// Serves `/metrics` until the listener fails; the figures read from the store are read at
/// each scrape.
async fn serve_metrics(listener: TcpListener, central: Arc<Central>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let c = central.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    c.render_metrics().await,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server stopped: {e}");
    }
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the web console listens on, when `[web]` is configured.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(|w| w.addr())
    }

    /// The address `/metrics` is served on, when `metrics_listen` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The shared state.
    pub fn central(&self) -> &Arc<Central> {
        &self.central
    }

    /// Stops: ends every open stream with `Unavailable` (agents reconnect, to another replica
    /// when there is one), finishes calls in progress, stops background work, closes the database.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Runs until the server fails or `signal` completes, then stops.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let mut serve = self.serve.take();
        let res = match serve.as_mut() {
            Some(s) => tokio::select! {
                r = s => Some(r),
                _ = signal => None,
            },
            None => None,
        };
        if res.is_none() {
            self.serve = serve;
        }
        self.stop().await;
        match res {
            Some(Ok(Err(e))) => Err(e),
            _ => Ok(()),
        }
    }

    async fn stop(&mut self) {
        let _ = self.central.stopping.send(true);
        self.central.hub.close_all(tonic::Status::unavailable(
            "latch-central is shutting down; reconnect",
        ));
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.serve.take() {
            let _ = s.await;
        }
        if let Some(w) = self.web.take() {
            w.stop().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.central.store.close().await;
        tracing::info!(replica = %self.central.replica_id, "latch-central stopped");
    }
}

/// The write path's commits, into this replica's metrics.
struct CommitMetrics(crate::metrics::Metrics);

impl crate::store::CommitObserver for CommitMetrics {
    fn committed(&self, took: std::time::Duration, members: u64) {
        self.0.commit_seconds.observe(took.as_secs_f64());
        self.0.batch_size.observe(members as f64);
    }
}
