//! The harness's one error type: which step failed, and why.

/// A benchmark that could not run (or ran into answers it did not expect).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Step {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Failed(String),
}

/// `.step("what was being done")` on any fallible result.
pub(crate) trait Step<T> {
    fn step(self, context: impl Into<String>) -> Result<T, BenchError>;
}

impl<T, E> Step<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn step(self, context: impl Into<String>) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::Step {
            context: context.into(),
            source: Box::new(e),
        })
    }
}
