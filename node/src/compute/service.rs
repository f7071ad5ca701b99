//! The `Jobs` gRPC service: stream job and schedule definitions recorded in the catalog through
//! the metadata leader. The statement itself is checked by the SQL layer before it gets here.

use tonic::{Request, Response, Status};
use weir_proto::v1::alter_schedule_request::Action;
use weir_proto::v1::jobs_client::JobsClient;
use weir_proto::v1::jobs_server::Jobs;
use weir_proto::v1::{
    AlterScheduleRequest, CreateJobRequest, CreateJobResponse, CreateScheduleRequest, JobAck,
    JobName, SetJobRunningRequest, TaskState, TaskStatusReply, TaskStatusRequest,
};
use weir_sql::schedule::fence::now_ms;
use weir_sql::schedule::runs::{leases_schema, runs_schema, LEASES_TABLE, RUNS_TABLE};
use weir_sql::schedule::MIN_EVERY_MS;
use weir_storage::catalog::{
    JobInfo, MetaCommand, MetaResponse, Refusal, ScheduleInfo, TaskInfo, DEFAULT_SPLIT_BYTES,
};

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

impl JobsService {
    /// Creates the run history and lease tables on first use; called on the metadata leader.
    /// They are internal (their names are reserved), so they are proposed here rather than
    /// through `CreateTable`.
    async fn ensure_schedule_tables(&self) -> Result<(), Status> {
        for (name, schema) in [(RUNS_TABLE, runs_schema()), (LEASES_TABLE, leases_schema())] {
            let catalog = self.ctx.registry.catalog()?;
            if catalog.tables.contains_key(name) {
                continue;
            }
            let replicas = crate::placement::default_replicas(&catalog, &self.ctx.liveness);
            let placement = crate::placement::place_new(&catalog, &self.ctx.liveness, 1, replicas)?;
            let answer = self
                .ctx
                .propose_meta(MetaCommand::CreateTable {
                    name: name.to_string(),
                    schema,
                    replicas,
                    split_bytes: DEFAULT_SPLIT_BYTES,
                    split_keys: vec![],
                    placement,
                })
                .await?;
            match answer {
                // Created by a concurrent first schedule: as good.
                MetaResponse::Rejected(Refusal::AlreadyExists, _) => {}
                MetaResponse::Rejected(kind, m) => return Err(NodeError::refused(kind, m).into()),
                _ => {}
            }
        }
        Ok(())
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
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
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
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
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
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(JobAck {})),
        }
    }

    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<CreateJobResponse>, Status> {
        let req = request.get_ref();
        crate::names::validate("schedule", &req.name)?;
        if req.statement.trim().is_empty() {
            return Err(NodeError::InvalidArgument("a schedule needs its statement".into()).into());
        }
        if req.cron.is_empty() && req.every_ms < MIN_EVERY_MS {
            return Err(NodeError::InvalidArgument(format!(
                "a schedule runs at most every {MIN_EVERY_MS} ms, {} asked for",
                req.every_ms
            ))
            .into());
        }
        if !req.cron.is_empty() {
            weir_sql::schedule::parse_cron(&req.cron)
                .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        }
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { JobsClient::new(ch).create_schedule(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        self.ensure_schedule_tables().await?;
        let req = request.into_inner();
        let schedule = ScheduleInfo {
            name: req.name,
            id: 0,
            statement: req.statement,
            every_ms: if req.cron.is_empty() { req.every_ms } else { 0 },
            cron: (!req.cron.is_empty()).then_some(req.cron),
            after: req.after,
            paused: false,
            created_ms: now_ms(),
            run_now: None,
        };
        match self
            .ctx
            .propose_meta(MetaCommand::CreateSchedule { schedule })
            .await?
        {
            MetaResponse::JobId(id) => Ok(Response::new(CreateJobResponse { id })),
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            other => {
                Err(NodeError::Internal(format!("creating a schedule answered {other:?}")).into())
            }
        }
    }

    async fn alter_schedule(
        &self,
        request: Request<AlterScheduleRequest>,
    ) -> Result<Response<JobAck>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { JobsClient::new(ch).alter_schedule(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        let action = Action::try_from(req.action).map_err(|_| {
            NodeError::InvalidArgument(format!("unknown schedule action {}", req.action))
        })?;
        let name = req.name;
        let cmd = match action {
            Action::Pause => MetaCommand::SetSchedulePaused { name, paused: true },
            Action::Resume => MetaCommand::SetSchedulePaused {
                name,
                paused: false,
            },
            Action::Drop => MetaCommand::DropSchedule { name },
            Action::RunNow => MetaCommand::RunScheduleNow {
                name,
                at_ms: now_ms(),
            },
        };
        match self.ctx.propose_meta(cmd).await? {
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(JobAck {})),
        }
    }

    async fn task_status(
        &self,
        request: Request<TaskStatusRequest>,
    ) -> Result<Response<TaskStatusReply>, Status> {
        let job = request.into_inner().job_id;
        let tasks = self
            .ctx
            .tasks
            .job(job)
            .into_iter()
            .map(TaskState::from)
            .collect();
        Ok(Response::new(TaskStatusReply { tasks }))
    }
}
