//! The root supervisor: parent of the core actors (router, runner pool, preprocessor pool,
//! trigger supervisor).

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// Parent of the core actors. A core actor failing is a bug that in-memory state cannot
/// survive safely, so the root stops and the process exits; the durable queue is re-dispatched
/// on the next start.
pub struct RootSupervisor;

pub enum RootMsg {}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), error = %err, "core actor failed; stopping millgate");
                myself.stop(Some(format!(
                    "core actor {:?} failed: {err}",
                    cell.get_name()
                )));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::info!(actor = ?cell.get_name(), reason = ?reason, "core actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}
