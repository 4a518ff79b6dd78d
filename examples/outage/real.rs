//! `--real`: the same incident over loopback HTTP, in real time. Each stack gets its
//! own axum downstream (the same [`Downstream`] model behind two routes) on
//! 127.0.0.1, and its clients call it with a hyper-util client; the stacks run side by
//! side. Figures vary a little from run to run, as real timing does.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::util::BoxCloneService;

use crate::sim::{self, Downstream, Kind, Model, Plan, Run, Transport};
use crate::stacks::StackKind;

/// Runs every stack at once, each against its own loopback server, on the current
/// (real-time) runtime.
pub async fn run_all(kinds: &[StackKind], plan: &Plan) -> Result<Vec<Run>, BoxError> {
    let mut runs = Vec::new();
    for &kind in kinds {
        let plan = plan.clone();
        runs.push(tokio::spawn(async move { run_one(kind, &plan).await }));
    }
    let mut out = Vec::new();
    for run in runs {
        out.push(run.await??);
    }
    Ok(out)
}

async fn run_one(kind: StackKind, plan: &Plan) -> Result<Run, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let downstream = Downstream::new(
        plan.script.clone(),
        Model::for_load(plan.load.total_rate()),
        start,
        plan.seed,
    );
    let app = Router::new()
        .route("/work", get(serve_user))
        .route("/probe", get(serve_probe))
        .with_state(downstream.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let transport = http_transport(
        format!("http://{addr}/work").parse()?,
        format!("http://{addr}/probe").parse()?,
    );
    let run = sim::run_stack(kind, plan, start, &downstream, transport).await;
    server.abort();
    run
}

async fn serve_user(State(downstream): State<Arc<Downstream>>) -> StatusCode {
    status(downstream.serve(Kind::User).await)
}

async fn serve_probe(State(downstream): State<Arc<Downstream>>) -> StatusCode {
    status(downstream.serve(Kind::Probe).await)
}

fn status(result: Result<(), sim::DownstreamError>) -> StatusCode {
    match result {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A GET per call; any status but 2xx is an error.
fn http_transport(work: Uri, probe: Uri) -> Transport {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    BoxCloneService::new(tower::service_fn(move |kind: Kind| {
        let uri = match kind {
            Kind::User => work.clone(),
            Kind::Probe => probe.clone(),
        };
        let response = client.get(uri);
        async move {
            let response = response.await?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(BoxError::from(format!("status {}", response.status())))
            }
        }
    }))
}
