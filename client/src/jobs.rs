//! Stream jobs and schedules in the catalog: record, drop, stop and start them. Both are written
//! in SQL (`CREATE JOB ... AS INSERT INTO ... SELECT ...`, `CREATE SCHEDULE ... AS ...`); the SQL
//! layer plans the statement and calls these.

use tonic::transport::Channel;
use tonic::Code;
use weir_proto::v1::jobs_client::JobsClient;
use weir_proto::v1::{self};

use crate::client::{request, Client};
use crate::error::Result;

fn jobs(channel: Channel) -> JobsClient<Channel> {
    JobsClient::new(channel)
}

/// A stream job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its name.
    pub name: String,
    /// The `INSERT INTO ... SELECT ...` statement it runs.
    pub definition: String,
    /// The topic it reads.
    pub source: String,
    /// The table it writes.
    pub sink: String,
    /// Start at the end of the topic rather than its earliest record.
    pub start_latest: bool,
    /// Tasks: one per partition of the source.
    pub tasks: u32,
}

impl Client {
    /// Records a stream job; returns its id.
    pub async fn create_job(&self, job: &NewJob) -> Result<u64> {
        let timeout = self.config().request_timeout;
        let req = v1::CreateJobRequest {
            name: job.name.clone(),
            definition: job.definition.clone(),
            source: job.source.clone(),
            sink: job.sink.clone(),
            start_latest: job.start_latest,
            tasks: job.tasks,
        };
        Ok(self
            .call_any(|ch| {
                let req = req.clone();
                async move { jobs(ch).create_job(request(req, timeout)).await }
            })
            .await?
            .id)
    }

    /// Forgets a stream job; its tasks stop and what it wrote stays.
    pub async fn drop_job(&self, name: &str) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::JobName {
            name: name.to_string(),
        };
        // A retry after a lost answer may find the job dropped by the first attempt.
        self.call_any_tolerating(Some(Code::NotFound), |ch| {
            let req = req.clone();
            async move { jobs(ch).drop_job(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// Stops (`running` false) or starts a job's tasks.
    pub async fn set_job_running(&self, name: &str, running: bool) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::SetJobRunningRequest {
            name: name.to_string(),
            running,
        };
        self.call_any(|ch| {
            let req = req.clone();
            async move { jobs(ch).set_job_running(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// What the tasks of job `job_id` running on the node at `addr` have done.
    pub async fn task_status(&self, addr: &str, job_id: u64) -> Result<Vec<v1::TaskState>> {
        let timeout = self.config().request_timeout;
        let channel = self.pool().channel(addr)?;
        let reply = jobs(channel)
            .task_status(request(v1::TaskStatusRequest { job_id }, timeout))
            .await
            .map_err(|s| crate::error::ClientError::from_status(addr, &s))?;
        Ok(reply.into_inner().tasks)
    }

    /// Records a schedule running `statement` every `every_ms` milliseconds (or at the times of
    /// the cron expression `cron`), after the schedules in `after`; returns its id.
    pub async fn create_schedule(
        &self,
        name: &str,
        statement: &str,
        every_ms: u64,
        cron: Option<&str>,
        after: &[String],
    ) -> Result<u64> {
        let timeout = self.config().request_timeout;
        let req = v1::CreateScheduleRequest {
            name: name.to_string(),
            statement: statement.to_string(),
            every_ms,
            after: after.to_vec(),
            cron: cron.unwrap_or_default().to_string(),
        };
        Ok(self
            .call_any(|ch| {
                let req = req.clone();
                async move { jobs(ch).create_schedule(request(req, timeout)).await }
            })
            .await?
            .id)
    }

    /// Pauses, resumes, drops or runs a schedule now.
    pub async fn alter_schedule(
        &self,
        name: &str,
        action: v1::alter_schedule_request::Action,
    ) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::AlterScheduleRequest {
            name: name.to_string(),
            action: action as i32,
        };
        // A retried drop may find the schedule dropped by the first attempt.
        let tolerate =
            (action == v1::alter_schedule_request::Action::Drop).then_some(Code::NotFound);
        self.call_any_tolerating(tolerate, |ch| {
            let req = req.clone();
            async move { jobs(ch).alter_schedule(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }
}
