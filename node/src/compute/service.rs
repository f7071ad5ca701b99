//! The `Jobs` gRPC service: stream job definitions recorded in the catalog through the metadata
//! leader. The statement itself is checked by the SQL layer before it gets here.

use tonic::{Request, Response, Status};
use weir_proto::v1::jobs_client::JobsClient;
use weir_proto::v1::jobs_server::Jobs;
use weir_proto::v1::{CreateJobRequest, CreateJobResponse, JobAck, JobName, SetJobRunningRequest};
use weir_storage::catalog::{JobInfo, MetaCommand, MetaResponse, TaskInfo};

use crate::cluster::NodeContext;
use crate::error::NodeError;
use crate::leader;

/// Most tasks (source partitions) one job may have.
const MAX_TASKS: u32 = 1024;

/// Serves `Jobs` on this node.
pub struct JobsService {
    ctx: NodeContext,
}

impl JobsService {
    /// The service over this node's context.
    pub fn new(ctx: NodeContext) -> JobsService {
        JobsService { ctx }
    }
}

/// A refusal of a job command, with the status its cause calls for.
fn refused(m: String) -> Status {
    if m.contains("does not exist") {
        NodeError::NotFound(m).into()
    } else if m.contains("already exists") {
        NodeError::AlreadyExists(m).into()
    } else {
        NodeError::FailedPrecondition(m).into()
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<CreateJobResponse>, Status> {
        let req = request.get_ref();
        crate::names::validate("job", &req.name)?;
        if req.definition.trim().is_empty() {
            return Err(NodeError::InvalidArgument("a job needs its statement".into()).into());
        }
        if req.tasks == 0 || req.tasks > MAX_TASKS {
            return Err(NodeError::InvalidArgument(format!(
                "a job runs 1 to {MAX_TASKS} tasks, {} asked for",
                req.tasks
            ))
            .into());
        }
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { JobsClient::new(ch).create_job(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        let job = JobInfo {
            name: req.name,
            id: 0,
            definition: req.definition,
            source: req.source,
            sink: req.sink,
            start_latest: req.start_latest,
            running: true,
            tasks: vec![
                TaskInfo {
                    node: None,
                    epoch: 0
                };
                req.tasks as usize
            ],
        };
        match self
            .ctx
            .propose_meta(MetaCommand::CreateJob { job })
            .await?
        {
            MetaResponse::JobId(id) => Ok(Response::new(CreateJobResponse { id })),
            MetaResponse::Rejected(m) => Err(refused(m)),
            other => Err(NodeError::Internal(format!("creating a job answered {other:?}")).into()),
        }
    }

    async fn drop_job(&self, request: Request<JobName>) -> Result<Response<JobAck>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { JobsClient::new(ch).drop_job(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let name = request.into_inner().name;
        match self.ctx.propose_meta(MetaCommand::DropJob { name }).await? {
            MetaResponse::Rejected(m) => Err(refused(m)),
            _ => Ok(Response::new(JobAck {})),
        }
    }

    async fn set_job_running(
        &self,
        request: Request<SetJobRunningRequest>,
    ) -> Result<Response<JobAck>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { JobsClient::new(ch).set_job_running(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        match self
            .ctx
            .propose_meta(MetaCommand::SetJobRunning {
                name: req.name,
                running: req.running,
            })
            .await?
        {
            MetaResponse::Rejected(m) => Err(refused(m)),
            _ => Ok(Response::new(JobAck {})),
        }
    }
}
