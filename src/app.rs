//! The whole application: the service (actors, store, ingress) plus the admin listener.

use std::net::SocketAddr;
use std::time::Duration;

use millgate_actors::{Config, Service, ServiceError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("cannot listen on {addr} (admin): {reason}")]
    AdminListen { addr: String, reason: String },
    #[error("{0}")]
    AdminToken(String),
}

pub struct App {
    pub service: Service,
    /// Where the admin API is bound, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<(JoinHandle<()>, watch::Sender<bool>)>,
}

impl App {
    pub async fn start(config: Config) -> Result<Self, AppError> {
        let admin_config = config.admin.clone();
        let admin_token = match &admin_config {
            Some(_) => {
                // Installed before anything is counted, so no early event is missing from /metrics.
                admin::metrics::handle();
                Some(admin::token::resolve(&config).map_err(AppError::AdminToken)?)
            }
            None => None,
        };
        let service = Service::start(config).await?;
        let (Some(admin_config), Some(admin_token)) = (admin_config, admin_token) else {
            return Ok(Self {
                service,
                admin_addr: None,
                admin: None,
            });
        };
        let listener = tokio::net::TcpListener::bind(&admin_config.listen)
            .await
            .map_err(|e| AppError::AdminListen {
                addr: admin_config.listen.clone(),
                reason: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| AppError::AdminListen {
            addr: admin_config.listen.clone(),
            reason: e.to_string(),
        })?;
        let listener_view = admin::guard::Listener::new(addr, &admin_config.allowed_hosts);
        let router = admin::router(admin::AdminState::new(
            &service,
            &admin_token,
            listener_view,
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        // Same header/idle timeouts and connection cap as the webhook listener, counted together.
        let server = tokio::spawn(millgate_actors::ingress::listener::serve(
            listener,
            router,
            service.connections.clone(),
            "admin",
            stop_rx,
        ));
        tracing::info!(%addr, "admin API and dashboard listening");
        Ok(Self {
            service,
            admin_addr: Some(addr),
            admin: Some((server, stop_tx)),
        })
    }

    /// Resolves when the supervision tree stops on its own (a core actor failed).
    pub async fn stopped(&mut self) {
        self.service.stopped().await;
    }

    pub async fn stop(self) {
        if let Some((server, stop)) = self.admin {
            let _ = stop.send(true);
            // SSE streams never end on their own; give them a moment, then move on.
            let mut server = server;
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                // Their handlers hold the service: cut them so that it can stop.
                server.abort();
                let _ = server.await;
            }
        }
        self.service.stop().await;
    }
}
