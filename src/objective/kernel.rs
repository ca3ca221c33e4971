//! The two kernels of the sequence-level objective behind one interface, and the one place that
//! chooses between them: the fused host kernel (host.rs: float64 on the CPU, the listwise
//! family) and the tensor kernel (tensor_path.rs: every loss, any device and dtype). Either
//! delivers its per-row results to a sink: new tensors, or the caller's host buffers.

use super::column::Column;
use super::front::{check_result, Checked};
use super::{host, Metrics, Objective};
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Host,
    Tensor,
}

impl Kernel {
    /// The host kernel wherever it computes the configuration: float64 CPU data with groups.
    pub fn for_inputs(obj: &Objective, x: &Checked) -> Kernel {
        let host_data = x.device == Device::Cpu && x.kind == Kind::Double;
        if obj.plan.host_kernel && host_data && x.groups.count() > 0 {
            Kernel::Host
        } else {
            Kernel::Tensor
        }
    }
}

/// Where an evaluation delivers d loss / d logp and the scores.
pub(crate) trait Sink {
    type Rows;
    /// That it can take n rows (checked by the front, before any work).
    fn check(&self, n: usize) -> Result<()>;
    fn put(self, grad: Column, scores: Column) -> Result<Self::Rows>;
}

/// New tensors (the tensor entry point).
pub(crate) struct NewTensors;

impl Sink for NewTensors {
    type Rows = (Tensor, Tensor);
    fn check(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn put(self, grad: Column, scores: Column) -> Result<Self::Rows> {
        Ok((grad.tensor(), scores.tensor()))
    }
}

/// The caller's host buffers, each optional (the host entry point).
pub(crate) struct HostBuffers<'o> {
    pub grad: Option<&'o mut [f64]>,
    pub scores: Option<&'o mut [f64]>,
}

impl Sink for HostBuffers<'_> {
    type Rows = ();
    fn check(&self, n: usize) -> Result<()> {
        for (name, out) in [("grad_logp", &self.grad), ("scores", &self.scores)] {
            if out.as_ref().is_some_and(|o| o.len() != n) {
                return Err(Error::shape(format!(
                    "the {name} output has the wrong length, expected {n}"
                )));
            }
        }
        Ok(())
    }
    fn put(self, grad: Column, scores: Column) -> Result<()> {
        if let Some(out) = self.grad {
            grad.copy_to(out)?;
        }
        if let Some(out) = self.scores {
            scores.copy_to(out)?;
        }
        Ok(())
    }
}

impl Objective {
    /// Evaluates checked inputs on `kernel`, keeps the metrics as the last ones and delivers
    /// the gradient and scores to `sink`.
    pub(crate) fn run<S: Sink>(
        &self,
        x: &Checked,
        kernel: Kernel,
        sink: S,
    ) -> Result<(f64, Metrics, S::Rows)> {
        match kernel {
            Kernel::Host => self.run_host(x, sink),
            Kernel::Tensor => {
                let out = self.eval_tensors(x)?;
                let grad = Column::Tensor(out.grad_logp);
                check_result(out.loss, &grad)?;
                self.state.lock().last = Some(out.metrics);
                let rows = sink.put(grad, Column::Tensor(out.scores))?;
                Ok((out.loss, out.metrics, rows))
            }
        }
    }

    /// The host kernel writes into the objective's reused buffers (fresh large allocations
    /// cost page faults on every call), under its lock.
    fn run_host<S: Sink>(&self, x: &Checked, sink: S) -> Result<(f64, Metrics, S::Rows)> {
        fn on_host<'c>(c: &'c Column) -> &'c [f64] {
            c.host()
                .expect("the host kernel runs on contiguous float64 CPU data")
        }
        let mut state = self.state.lock();
        let st = &mut *state;
        let (loss, metrics) = host::eval(
            &self.cfg,
            self.plan.rule,
            on_host(&x.logp),
            on_host(&x.anchor),
            on_host(&x.signal),
            x.explicit,
            x.groups,
            &mut st.scratch_grad,
            &mut st.scratch_scores,
        );
        check_result(loss, &Column::Host(&st.scratch_grad))?;
        st.last = Some(metrics);
        let rows = sink.put(
            Column::Host(&st.scratch_grad),
            Column::Host(&st.scratch_scores),
        )?;
        Ok((loss, metrics, rows))
    }
}
