//! A batch of queued operations (the publisher's publishes, the joiner's joins) answered
//! by one script call, or, on a Redis Cluster, split into one call per hash slot.

use crate::bus::BusError;
use std::future::Future;

/// Runs `call` once per slot over `batch` (each call gets its slot's jobs in the batch's
/// order), all calls at once; one answer per job, in the batch's order. A call that failed
/// fails its own jobs only.
pub(crate) async fn per_slot<'a, J, R, F, Fut>(
    batch: &'a [J],
    slot: impl Fn(&J) -> u16,
    what: &str,
    call: F,
) -> Vec<Result<R, BusError>>
where
    F: Fn(Vec<&'a J>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, BusError>>,
{
    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let s = slot(job);
        match slots.iter_mut().find(|(x, _)| *x == s) {
            Some((_, idx)) => idx.push(i),
            None => slots.push((s, vec![i])),
        }
    }
    let calls = slots
        .iter()
        .map(|(_, idx)| call(idx.iter().map(|&i| &batch[i]).collect()));
    let results = futures_util::future::join_all(calls).await;
    let mut out: Vec<Option<Result<R, BusError>>> = (0..batch.len()).map(|_| None).collect();
    for ((_, idx), r) in slots.iter().zip(results) {
        for (&i, answer) in idx.iter().zip(spread(r, idx.len(), what)) {
            out[i] = Some(answer);
        }
    }
    out.into_iter()
        .map(|a| a.unwrap_or_else(|| Err(BusError::Internal(format!("{what}: no reply")))))
        .collect()
}

/// One call's answer as one answer per job (`n` of them): its list, or its error for each.
pub(crate) fn spread<R>(
    r: Result<Vec<R>, BusError>,
    n: usize,
    what: &str,
) -> Vec<Result<R, BusError>> {
    match r {
        Ok(v) if v.len() == n => v.into_iter().map(Ok).collect(),
        Ok(v) => {
            let e = BusError::Internal(format!("{what}: {} replies for {n} operations", v.len()));
            (0..n).map(|_| Err(e.clone())).collect()
        }
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs of one slot share a call, in order; each job gets its own answer back in the
    /// batch's order; a failed call fails its slot's jobs only.
    #[tokio::test]
    async fn a_batch_is_split_by_slot_and_answered_in_order() {
        let batch = [(1u16, 'a'), (2, 'b'), (1, 'c'), (3, 'd')];
        let out = per_slot(
            &batch,
            |j| j.0,
            "test",
            |jobs: Vec<&(u16, char)>| async move {
                if jobs[0].0 == 3 {
                    return Err(BusError::Unavailable("slot 3 down".into()));
                }
                Ok(jobs
                    .iter()
                    .map(|j| format!("{}{}", j.1, jobs.len()))
                    .collect())
            },
        )
        .await;
        let got: Vec<_> = out
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok("a2".to_string()),
                Ok("b1".to_string()),
                Ok("c2".to_string()),
                Err("bus unavailable: slot 3 down".to_string()),
            ]
        );
        let short = spread(Ok(vec![1]), 2, "test");
        assert!(
            short.iter().all(|r| r.is_err()),
            "a short answer fails every job"
        );
    }
}
