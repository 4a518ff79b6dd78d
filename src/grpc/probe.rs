//! A watchdog probe over the standard gRPC health checking protocol.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body::Body;
use tonic::client::GrpcService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::watchdog::Probe;
use crate::BoxError;

/// A [`Probe`] that calls `grpc.health.v1.Health/Check` for `service` (`""` for the
/// server as a whole) over `channel`, outside the breaker, and passes on `SERVING`.
/// Bounded by the watchdog's probe timeout like any probe.
///
/// ```no_run
/// # async fn run() -> Result<(), steadfast::BoxError> {
/// use steadfast::breaker::Breaker;
/// use steadfast::grpc::health_probe;
/// use steadfast::watchdog::Watchdog;
///
/// let prices = Breaker::new("prices");
/// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
/// let _watchdog = Watchdog::builder(&prices, health_probe(channel, "demo.Prices")).spawn()?;
/// # Ok(())
/// # }
/// ```
pub fn health_probe<T>(channel: T, service: impl Into<String>) -> HealthProbe<T> {
    HealthProbe {
        channel,
        service: service.into(),
    }
}

/// The probe of [`health_probe`].
#[derive(Clone)]
pub struct HealthProbe<T> {
    channel: T,
    service: String,
}

impl<T> fmt::Debug for HealthProbe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthProbe")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<T> Probe for HealthProbe<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn probe(&mut self) -> Self::Future {
        let mut client = HealthClient::new(self.channel.clone());
        let service = self.service.clone();
        Box::pin(async move {
            let answer = client
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await?
                .into_inner();
            match ServingStatus::try_from(answer.status) {
                Ok(ServingStatus::Serving) => Ok(()),
                Ok(status) => {
                    Err(format!("health of {service:?}: {}", status.as_str_name()).into())
                }
                Err(_) => Err(format!("health of {service:?}: status {}", answer.status).into()),
            }
        })
    }
}
