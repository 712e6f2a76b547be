//! The gRPC services: authentication, the checks of every field that comes from outside (written
//! once, in [`crate::validate`], for every channel), and conversion between the wire and the
//! engine. Behaviour lives in the engine modules.

use std::{collections::BTreeMap, sync::Arc};

use latch_proto::{
    encoded::EncodedAgentMessage,
    v1::{
        agent_message::Body, agent_service_server::AgentService, audit_stream_item::Item,
        reviewer_service_server::ReviewerService, AgentMessage, ApplyRulesRequest,
        ApplyRulesResponse, ApprovalAccepted, ApprovalRecord, ApprovalRequest, AuditBatch,
        AuditBatchAck, AuditChainInfo, AuditCheckpoint, AuditEntry, AuditStreamHeader,
        AuditStreamItem, CancelApprovalRequest, CancelApprovalResponse, DecideRequest,
        DecideResponse, DiffRulesRequest, DiffRulesResponse, GetAuditChainRequest,
        GetRequestRequest, GetRulesRequest, Grant, JustifyRequest, JustifyResponse,
        ListGrantsRequest, ListGrantsResponse, ListHostsRequest, ListHostsResponse,
        ListRequestsRequest, ListRequestsResponse, ListRulesRequest, ListRulesResponse,
        QueryAuditRequest, QueryAuditResponse, RegisterRequest, RegisterResponse, RequestEvent,
        RequestState, RevokeGrantRequest, RollbackRulesRequest, RuleSetVersion, RulesAck,
        RulesAckResponse, ShadowReportRequest, ShadowReportResponse, SignAuditCheckpointRequest,
        SubscribeRequest, WatchRequestsRequest, WhoAmIRequest, WhoAmIResponse,
    },
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    approval::State,
    audit::{checkpoint_to_proto, list_checkpoints, retention_boundary, PAGE},
    auth::{bearer, Identity, Login, Role},
    chain,
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::{Guarded, Outgoing, AGENT_QUEUE},
    rules::rules_push,
    rules::{Version, MAX_RULES_BYTES},
    store::AuditFilter,
    validate::{
        audit_filter, check_id, check_justification, check_labels, check_text, validate_decide,
        validate_request, MAX_BATCH, MAX_CONTEXT_BYTES, MAX_LABELS, MAX_REASON, MAX_TEXT,
    },
};

fn version_proto(v: Version, with_yaml: bool) -> RuleSetVersion {
    RuleSetVersion {
        version: v.version as u64,
        source_name: v.source_name,
        yaml: if with_yaml { v.yaml } else { String::new() },
        selector: v.selector.into_iter().collect(),
        applied_by: v.applied_by,
        applied_at_unix_ms: v.applied_at_ms,
        comment: v.comment,
        sha256: v.sha256,
        rollback_of: v.rollback_of as u64,
    }
}

fn to_i64(field: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{field} {v} is out of range")))
}

/// The agent service.
pub struct AgentApi {
    central: Arc<Central>,
}

impl AgentApi {
    /// Over `central`.
    pub fn new(central: Arc<Central>) -> Self {
        AgentApi { central }
    }

    fn auth<T>(&self, req: &Request<T>, host_id: &str) -> Result<()> {
        check_id("host_id", host_id)?;
        if self.central.is_stopping() {
            return Err(Error::Unavailable("latch-central is shutting down".into()));
        }
        // A verified client certificate is the stronger credential: when one was presented it
        // decides alone, and with a client CA configured nothing else is accepted.
        match req.peer_certs() {
            Some(certs) if !certs.is_empty() => crate::tls::authorize_agent(&certs, host_id),
            _ if self.central.agents_by_certificate() => Err(Error::Unauthenticated(
                "agent calls need a client certificate issued by the CA in tls.client_ca_file; \
                 none was presented"
                    .into(),
            )),
            _ => {
                let token = bearer(req.metadata())?;
                self.central.agents.check(token, host_id)?;
                Ok(())
            }
        }
    }
}

type Stream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        check_text("hostname", &r.hostname, 256)?;
        check_text("agent_version", &r.agent_version, 256)?;
        check_labels("labels", r.labels.iter())?;
        if let Some(c) = &r.capabilities {
            check_text("capabilities.kernel", &c.kernel, 256)?;
            if c.backends.len() > MAX_LABELS {
                return Err(Error::InvalidArgument(
                    "capabilities.backends has too many entries".into(),
                )
                .into());
            }
            check_labels("capabilities.features", c.features.iter())?;
        }
        self.central.register_host(r).await?;
        let labels = r.labels.clone().into_iter().collect();
        let version = self
            .central
            .desired_version(&labels)
            .await?
            .map(|v| v.version as u64)
            .unwrap_or(0);
        Ok(Response::new(RegisterResponse {
            host_id: r.host_id.clone(),
            rules_version: version,
            server_time_unix_ms: now_ms(),
        }))
    }

    type SubscribeStream = Stream<EncodedAgentMessage>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        if r.pending_request_ids.len() > 100_000 || r.grant_ids.len() > 100_000 {
            return Err(
                Error::InvalidArgument("too many pending_request_ids or grant_ids".into()).into(),
            );
        }
        for id in &r.pending_request_ids {
            check_id("pending_request_ids[]", id)?;
        }
        for id in &r.grant_ids {
            check_id("grant_ids[]", id)?;
        }
        let c = &self.central;
        let host_id = r.host_id.clone();
        let labels = c.host_labels(&host_id).await?;
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let handle = c.hub.add_agent(&host_id, labels.clone(), tx.clone());
        let guard_central = c.clone();
        let (gh, gid) = (host_id.clone(), handle.id);
        let stream = Guarded::new(crate::events::agent_stream(rx), move || {
            tracing::info!(host_id = %gh, "agent stream closed");
            if guard_central.hub.remove_agent(&gh, gid) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = guard_central.host_connection(&gh, false).await {
                            tracing::warn!(host_id = %gh, error = %e, "recording disconnection failed");
                        }
                    });
                }
            }
        });
        c.host_connection(&host_id, true).await?;
        // Replay: rules, then decisions and revocations the agent may have missed.
        let mut replay: Vec<EncodedAgentMessage> = Vec::new();
        if let Some(v) = c.desired_version(&labels).await? {
            // The stream is already registered, so a rules event delivered meanwhile may have
            // pushed this version; send it once.
            let prev = handle
                .rules_sent
                .fetch_max(v.version as u64, std::sync::atomic::Ordering::SeqCst);
            if prev < v.version as u64 {
                replay.push(c.hub.rules_push(v.version, || rules_push(&v)));
                c.record_push(&host_id, &v).await?;
            }
        }
        // Names known before decisions: a decision that made one known lets through a
        // connection that the agent must not ask about again.
        for m in c.known_name_messages().await? {
            replay.push(EncodedAgentMessage::new(&m));
        }
        for d in c.replay_decisions(&host_id, &r.pending_request_ids).await? {
            replay.push(EncodedAgentMessage::new(&AgentMessage {
                body: Some(Body::Decision(d)),
            }));
        }
        for rv in c.replay_revocations(&r.grant_ids).await? {
            replay.push(EncodedAgentMessage::new(&AgentMessage {
                body: Some(Body::Revocation(rv)),
            }));
        }
        for m in replay {
            if tx.try_send(Outgoing::Message(m)).is_err() {
                return Err(
                    Error::Unavailable("agent stream queue is full; reconnect".into()).into(),
                );
            }
        }
        drop(tx);
        tracing::info!(host_id, "agent stream open");
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_rules(
        &self,
        req: Request<RulesAck>,
    ) -> Result<Response<RulesAckResponse>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        check_text("error", &r.error, MAX_TEXT)?;
        if r.rules.len() > 100_000 {
            return Err(Error::InvalidArgument("too many rules".into()).into());
        }
        for (i, s) in r.rules.iter().enumerate() {
            check_text(&format!("rules[{i}].rule_name"), &s.rule_name, 256)?;
            check_text(&format!("rules[{i}].message"), &s.message, MAX_TEXT)?;
        }
        to_i64("version", r.version)?;
        self.central.ack_rules(r).await?;
        Ok(Response::new(RulesAckResponse {}))
    }

    async fn request_approval(
        &self,
        req: Request<ApprovalRequest>,
    ) -> Result<Response<ApprovalAccepted>, Status> {
        self.auth(&req, &req.get_ref().host_id)?;
        let r = req.into_inner();
        validate_request(&r)?;
        to_i64("rules_version", r.rules_version)?;
        Ok(Response::new(self.central.submit(r).await?))
    }

    async fn cancel_approval(
        &self,
        req: Request<CancelApprovalRequest>,
    ) -> Result<Response<CancelApprovalResponse>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        check_id("request_id", &r.request_id)?;
        check_text("reason", &r.reason, MAX_REASON)?;
        let s = self
            .central
            .cancel(&r.host_id, &r.request_id, &r.reason)
            .await?;
        Ok(Response::new(CancelApprovalResponse {
            state: s.to_proto() as i32,
        }))
    }

    async fn justify(
        &self,
        req: Request<JustifyRequest>,
    ) -> Result<Response<JustifyResponse>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        check_id("request_id", &r.request_id)?;
        check_justification("text", &r.text, false)?;
        let s = self
            .central
            .justify(&r.host_id, &r.request_id, &r.text)
            .await?;
        Ok(Response::new(JustifyResponse {
            state: s.to_proto() as i32,
        }))
    }

    async fn upload_audit(
        &self,
        req: Request<AuditBatch>,
    ) -> Result<Response<AuditBatchAck>, Status> {
        let r = req.get_ref();
        self.auth(&req, &r.host_id)?;
        if r.records.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "batch has {} records; at most {MAX_BATCH}",
                r.records.len()
            ))
            .into());
        }
        for (i, rec) in r.records.iter().enumerate() {
            check_id(&format!("records[{i}].record_id"), &rec.record_id)?;
            check_id(&format!("records[{i}].kind"), &rec.kind)?;
            check_text(&format!("records[{i}].rule_name"), &rec.rule_name, 256)?;
            check_text(&format!("records[{i}].workload"), &rec.workload, 256)?;
            check_text(&format!("records[{i}].action"), &rec.action, 32)?;
            check_text(
                &format!("records[{i}].details_json"),
                &rec.details_json,
                MAX_CONTEXT_BYTES,
            )?;
            if rec.time_unix_ms <= 0 {
                return Err(Error::InvalidArgument(format!(
                    "records[{i}] (record_id '{}'): time_unix_ms {} is not a time",
                    rec.record_id, rec.time_unix_ms
                ))
                .into());
            }
        }
        let (stored, duplicates) = self.central.upload_audit(r).await?;
        Ok(Response::new(AuditBatchAck { stored, duplicates }))
    }
}

/// The reviewer and admin service.
pub struct ReviewerApi {
    central: Arc<Central>,
}

impl ReviewerApi {
    /// Over `central`.
    pub fn new(central: Arc<Central>) -> Self {
        ReviewerApi { central }
    }

    async fn who<T>(&self, req: &Request<T>) -> Result<Identity> {
        if self.central.is_stopping() {
            return Err(Error::Unavailable("latch-central is shutting down".into()));
        }
        self.central.authenticate_metadata(req.metadata()).await
    }

    /// [`ReviewerApi::who`], with the token and the login it made.
    async fn login<'r, T>(&self, req: &'r Request<T>) -> Result<(&'r str, Login)> {
        if self.central.is_stopping() {
            return Err(Error::Unavailable("latch-central is shutting down".into()));
        }
        let token = bearer(req.metadata()).map_err(Error::from)?;
        Ok((token, self.central.login(token).await?))
    }
}

fn limit(v: u32, default: u32, max: u32) -> i64 {
    if v == 0 {
        default as i64
    } else {
        v.min(max) as i64
    }
}

#[tonic::async_trait]
impl ReviewerService for ReviewerApi {
    async fn list_requests(
        &self,
        req: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        self.who(&req).await?;
        let r = req.get_ref();
        let state = RequestState::try_from(r.state)
            .map_err(|_| Error::InvalidArgument(format!("state {} is unknown", r.state)))?;
        if !r.host_id.is_empty() {
            check_id("host_id", &r.host_id)?;
        }
        let requests = self
            .central
            .list_requests(
                State::from_proto(state),
                &r.host_id,
                limit(r.limit, 100, 1000),
            )
            .await?;
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    type WatchRequestsStream = Stream<RequestEvent>;

    async fn watch_requests(
        &self,
        req: Request<WatchRequestsRequest>,
    ) -> Result<Response<Self::WatchRequestsStream>, Status> {
        self.who(&req).await?;
        let c = self.central.clone();
        let mut events = c.hub.watch();
        let snapshot = c.list_requests(Some(State::Pending), "", 1000).await?;
        let (tx, rx) = mpsc::channel(256);
        let mut stopping = c.stopping.subscribe();
        tokio::spawn(async move {
            for rec in snapshot {
                if tx
                    .send(Ok(RequestEvent {
                        request: Some(rec),
                        snapshot: true,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) => if tx.send(Ok(ev)).await.is_err() { return },
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::aborted(format!("watch fell {n} events behind; watch again")))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("latch-central is shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_request(
        &self,
        req: Request<GetRequestRequest>,
    ) -> Result<Response<ApprovalRecord>, Status> {
        self.who(&req).await?;
        check_id("approval_id", &req.get_ref().approval_id)?;
        Ok(Response::new(
            self.central.record(&req.get_ref().approval_id).await?,
        ))
    }

    async fn decide(
        &self,
        req: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        let who = self.who(&req).await?;
        let input = validate_decide(req.get_ref())?;
        let (record, fin) = self.central.decide(&who, input).await?;
        Ok(Response::new(DecideResponse {
            request: Some(record),
            r#final: fin,
        }))
    }

    async fn break_glass(
        &self,
        req: Request<latch_proto::v1::BreakGlassRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        let who = self.who(&req).await?;
        let decision = req
            .get_ref()
            .decision
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("decision is missing".into()))?;
        let input = validate_decide(decision)?;
        let record = self.central.break_glass(&who, input).await?;
        Ok(Response::new(DecideResponse {
            request: Some(record),
            r#final: true,
        }))
    }

    async fn list_grants(
        &self,
        req: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.who(&req).await?;
        let r = req.get_ref();
        if !r.host_id.is_empty() {
            check_id("host_id", &r.host_id)?;
        }
        let grants = self
            .central
            .list_grants(r.include_inactive, &r.host_id)
            .await?;
        Ok(Response::new(ListGrantsResponse { grants }))
    }

    async fn revoke_grant(
        &self,
        req: Request<RevokeGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let who = self.who(&req).await?;
        let r = req.get_ref();
        check_id("grant_id", &r.grant_id)?;
        if r.reason.trim().is_empty() {
            return Err(Error::InvalidArgument("reason is mandatory".into()).into());
        }
        check_text("reason", &r.reason, MAX_REASON)?;
        Ok(Response::new(
            self.central
                .revoke_grant_closing(&who, &r.grant_id, r.reason.trim(), r.close_connections)
                .await?,
        ))
    }

    async fn apply_rules(
        &self,
        req: Request<ApplyRulesRequest>,
    ) -> Result<Response<ApplyRulesResponse>, Status> {
        let who = self.who(&req).await?;
        let r = req.get_ref();
        let source = if r.source_name.is_empty() {
            "rules.yaml"
        } else {
            r.source_name.as_str()
        };
        check_text("source_name", source, 256)?;
        check_text("comment", &r.comment, MAX_REASON)?;
        if r.yaml.len() > MAX_RULES_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{source} is {} bytes; at most {MAX_RULES_BYTES}",
                r.yaml.len()
            ))
            .into());
        }
        check_labels("selector", r.selector.iter())?;
        let selector: BTreeMap<String, String> = r.selector.clone().into_iter().collect();
        let (version, set, diff) = self
            .central
            .apply_rules(&who, source, &r.yaml, selector, r.dry_run, &r.comment)
            .await?;
        Ok(Response::new(ApplyRulesResponse {
            version: version.unwrap_or(0) as u64,
            rules: set.rules.len() as u32,
            workloads: set.workloads.len() as u32,
            diff: diff.unified,
        }))
    }

    async fn list_rules(
        &self,
        req: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesResponse>, Status> {
        self.who(&req).await?;
        let versions = self
            .central
            .rule_versions()
            .await?
            .into_iter()
            .map(|v| version_proto(v, false))
            .collect();
        Ok(Response::new(ListRulesResponse { versions }))
    }

    async fn get_rules(
        &self,
        req: Request<GetRulesRequest>,
    ) -> Result<Response<RuleSetVersion>, Status> {
        self.who(&req).await?;
        let v = to_i64("version", req.get_ref().version)?;
        Ok(Response::new(version_proto(
            self.central.rule_version(v).await?,
            true,
        )))
    }

    async fn diff_rules(
        &self,
        req: Request<DiffRulesRequest>,
    ) -> Result<Response<DiffRulesResponse>, Status> {
        self.who(&req).await?;
        let r = req.get_ref();
        let from = to_i64("from_version", r.from_version)?;
        let to = to_i64("to_version", r.to_version)?;
        if from == 0 {
            return Err(Error::InvalidArgument("from_version is 0".into()).into());
        }
        let d = self.central.diff_versions(from, to).await?;
        Ok(Response::new(DiffRulesResponse {
            unified_diff: d.unified,
            added_rules: d.added,
            removed_rules: d.removed,
            changed_rules: d.changed,
        }))
    }

    async fn rollback_rules(
        &self,
        req: Request<RollbackRulesRequest>,
    ) -> Result<Response<ApplyRulesResponse>, Status> {
        let who = self.who(&req).await?;
        let r = req.get_ref();
        let v = to_i64("version", r.version)?;
        if v == 0 {
            return Err(Error::InvalidArgument("version is 0".into()).into());
        }
        if r.reason.trim().is_empty() {
            return Err(Error::InvalidArgument("reason is mandatory".into()).into());
        }
        check_text("reason", &r.reason, MAX_REASON)?;
        let (version, set, diff) = self
            .central
            .rollback_rules(&who, v, r.reason.trim())
            .await?;
        Ok(Response::new(ApplyRulesResponse {
            version: version as u64,
            rules: set.rules.len() as u32,
            workloads: set.workloads.len() as u32,
            diff: diff.unified,
        }))
    }

    async fn shadow_report(
        &self,
        req: Request<ShadowReportRequest>,
    ) -> Result<Response<ShadowReportResponse>, Status> {
        self.who(&req).await?;
        let counts = self
            .central
            .shadow_report(req.get_ref().since_unix_ms)
            .await?;
        Ok(Response::new(ShadowReportResponse { counts }))
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.who(&req).await?;
        let mut hosts = self.central.list_hosts().await?;
        for h in &mut hosts {
            // This replica knows its own streams for sure.
            h.connected |= self.central.hub.is_connected(&h.host_id);
        }
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn query_audit(
        &self,
        req: Request<QueryAuditRequest>,
    ) -> Result<Response<QueryAuditResponse>, Status> {
        self.who(&req).await?;
        let f = audit_filter(req.get_ref())?;
        let entries = self
            .central
            .store()
            .query_audit(&f, limit(req.get_ref().limit, 100, 10_000))
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(AuditEntry::from)
            .collect();
        Ok(Response::new(QueryAuditResponse { entries }))
    }

    type ExportAuditStream = Stream<AuditEntry>;

    async fn export_audit(
        &self,
        req: Request<QueryAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.who(&req).await?;
        let r = req.into_inner();
        let f = audit_filter(&r)?;
        let c = self.central.clone();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let _ = stream_records(&c, f, r.limit, &tx, AuditEntry::from).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type StreamAuditStream = Stream<AuditStreamItem>;

    async fn stream_audit(
        &self,
        req: Request<QueryAuditRequest>,
    ) -> Result<Response<Self::StreamAuditStream>, Status> {
        self.who(&req).await?;
        let r = req.into_inner();
        let mut f = audit_filter(&r)?;
        let c = self.central.clone();
        let complete = f.is_unfiltered() && f.after_seq == 0 && r.limit == 0;
        // A complete export is sealed by a checkpoint signed at the head it covers.
        let head = if complete {
            c.sign_checkpoint(chain::kind::EXPORT)
                .await?
                .map(|cp| cp.seq)
                .unwrap_or(0)
        } else {
            c.store().audit_head().await.map_err(Error::from)?.seq
        };
        f.until_seq = head;
        let checkpoints = list_checkpoints(c.store()).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let header = AuditStreamItem {
                item: Some(Item::Header(AuditStreamHeader {
                    complete,
                    head_seq: head,
                    key_id: chain::key_id(&c.public_key()),
                    time_unix_ms: now_ms(),
                })),
            };
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            for cp in checkpoints.iter().filter(|cp| cp.seq <= head) {
                let item = AuditStreamItem {
                    item: Some(Item::Checkpoint(checkpoint_to_proto(cp))),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            let _ = stream_records(&c, f, r.limit, &tx, |rec| AuditStreamItem {
                item: Some(Item::Entry(AuditEntry::from(rec))),
            })
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_audit_chain(
        &self,
        req: Request<GetAuditChainRequest>,
    ) -> Result<Response<AuditChainInfo>, Status> {
        self.who(&req).await?;
        let c = &self.central;
        let head = c.store().audit_head().await.map_err(Error::from)?;
        let key = c.public_key();
        Ok(Response::new(AuditChainInfo {
            head_seq: head.seq,
            head_hash: hex::encode(head.hash),
            checkpoints: list_checkpoints(c.store())
                .await?
                .iter()
                .map(checkpoint_to_proto)
                .collect(),
            public_key_pem: chain::public_key_pem(&key),
            key_id: chain::key_id(&key),
            retention_boundary_seq: retention_boundary(c.store()).await?,
            retention: c
                .audit_config
                .retention
                .clone()
                .unwrap_or_else(|| "forever".into()),
        }))
    }

    async fn sign_audit_checkpoint(
        &self,
        req: Request<SignAuditCheckpointRequest>,
    ) -> Result<Response<AuditCheckpoint>, Status> {
        let who = self.who(&req).await?;
        // Checkpoints are kept for ever, so adding them is an administrator's act, not a reader's.
        if !who.has(Role::Admin) {
            tracing::warn!(subject = %who.subject, "audit checkpoint refused: not an admin");
            return Err(Error::PermissionDenied(format!(
                "'{}' is not an admin; signing an audit checkpoint needs the admin role",
                who.subject
            ))
            .into());
        }
        let cp = self
            .central
            .sign_checkpoint(chain::kind::MANUAL)
            .await?
            .ok_or_else(|| Error::FailedPrecondition("the audit log is empty".into()))?;
        Ok(Response::new(checkpoint_to_proto(&cp)))
    }

    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let (token, login) = self.login(&req).await?;
        self.central.record_login(token, &login, "api").await?;
        let who = login.identity;
        let role = who
            .roles
            .iter()
            .max()
            .map(|r| format!("{r:?}").to_lowercase())
            .unwrap_or_default();
        Ok(Response::new(WhoAmIResponse {
            subject: who.subject,
            email: who.email,
            groups: who.groups,
            role,
        }))
    }
}

/// Streams matching records page by page until `limit` (0: all) or the end; a failure ends
/// the stream with its status.
async fn stream_records<T>(
    c: &Central,
    mut f: AuditFilter,
    limit: u32,
    tx: &mpsc::Sender<Result<T, Status>>,
    map: impl Fn(chain::Record) -> T,
) -> Option<()> {
    let mut left = if limit == 0 { i64::MAX } else { limit as i64 };
    while left > 0 {
        let page = match c.store().query_audit(&f, left.min(PAGE)).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(Status::from(Error::from(e)))).await;
                return None;
            }
        };
        if page.is_empty() {
            return Some(());
        }
        for e in page {
            f.after_seq = e.seq;
            left -= 1;
            tx.send(Ok(map(e))).await.ok()?;
        }
    }
    Some(())
}
