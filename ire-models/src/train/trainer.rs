//! One training step, evaluation, and the state a checkpoint must hold to resume exactly.
//!
//! A step: (when an IRE refresh is due) the estimator pass on labels sampled from the model's
//! own softmax, with batch-norm statistics frozen; the training forward/backward (statistics
//! updated); optional clipping of the training gradient; for SAM the second forward/backward
//! at the perturbed point (statistics frozen); the optimizer step at the scheduled rate.
//! Every random choice is derived from `(seed, step)`, so a resumed run is bit-identical.

use std::ops::Range;

use ire_core::{LrSchedule, Result as CoreResult};

use super::choices::{EstimatorBatch, EstimatorForward};
use super::config::TrainConfig;
use super::config_error::ConfigError;
use super::optimizer::AnyOptimizer;
use super::source::{Input, Source};
use super::train_error::TrainError;
use crate::data::{Batch, ImageDataset};
use crate::models::{Model, ModelSpec};
use crate::nn::ops::check_token_ids;
use crate::nn::{BnMode, NnOps};
use crate::rng::Rng;

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    /// Step number (0-based) just taken.
    pub step: u64,
    /// Epoch of that step.
    pub epoch: u64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss of the batch (before the step).
    pub loss: f64,
    /// Training accuracy of the batch.
    pub acc: f64,
    /// IRE's κ_t (0 for the base optimizers).
    pub kappa: f64,
    /// Whether the IRE mask was refreshed.
    pub refreshed: bool,
    /// Examples in the batch.
    pub n: usize,
}

/// Test-split metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalMetrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy.
    pub acc: f64,
    /// Examples.
    pub n: usize,
}

// Stream identifiers of the derived generators.
const INIT_STREAM: u64 = 0x1A17;
const SAMPLE_STREAM: u64 = 0x5A3F;

/// A model, its data and its optimizer on backend `B`.
pub struct Trainer<B: NnOps + 'static> {
    /// The run's configuration.
    pub cfg: TrainConfig,
    b: B,
    model: Box<dyn Model<B, f32>>,
    params: Vec<B::Buffer<f32>>,
    grads: Vec<B::Buffer<f32>>,
    est_grads: Vec<B::Buffer<f32>>,
    opt: AnyOptimizer<B>,
    data: Source,
    x: B::Buffer<f32>,
    y: B::Buffer<f32>,
    dlogits: B::Buffer<f32>,
    uniforms: B::Buffer<f32>,
    sampled: B::Buffer<f32>,
    fixed: Option<Batch>,
    schedule: LrSchedule,
    total_steps: u64,
    /// Steps taken.
    pub step: u64,
}

impl<B: NnOps + 'static> Trainer<B> {
    /// Loads the data, builds and initializes the model and the optimizer.
    pub fn new(b: B, cfg: TrainConfig) -> Result<Self, TrainError> {
        cfg.validate()?;
        if cfg.dataset == super::config::DatasetKind::Text {
            let src = Source::text(&cfg)?;
            return Self::with_source(b, cfg, src);
        }
        let (train, test) = cfg.load_data()?;
        Self::with_data(b, cfg, train, test)
    }

    /// As [`Trainer::new`], with image datasets already in memory.
    pub fn with_data(
        b: B,
        cfg: TrainConfig,
        train: ImageDataset,
        test: ImageDataset,
    ) -> Result<Self, TrainError> {
        cfg.validate()?;
        if train.is_empty() {
            return Err(TrainError::EmptyTrainingSplit);
        }
        crate::data::check_splits(&cfg.data, &train, &test)?;
        let src = Source::images(&cfg, train, test);
        Self::with_source(b, cfg, src)
    }

    /// As [`Trainer::new`], with a data source.
    pub fn with_source(b: B, cfg: TrainConfig, data: Source) -> Result<Self, TrainError> {
        cfg.validate()?;
        let spec: ModelSpec = cfg.model.parse().map_err(|_| ConfigError::UnknownModel {
            value: cfg.model.clone(),
        })?;
        let model = match data.input() {
            Input::Image { shape, classes } if !spec.is_lm() => {
                spec.build::<B, f32>(&b, shape, classes)?
            }
            Input::Tokens { vocab, context } if spec.is_lm() => {
                spec.build_lm::<B, f32>(&b, vocab, context)?
            }
            _ => {
                return Err(TrainError::ModelDoesNotFit {
                    model: cfg.model.clone(),
                    data: if spec.is_lm() { "image" } else { "text" },
                });
            }
        };
        super::footprint::check(&super::footprint::training(
            &cfg,
            &data,
            model.layout().len(),
            model.num_classes(),
            model.rows_per_example(),
        ))?;
        let init: Vec<f32> = model
            .layout()
            .init(&mut Rng::derive(cfg.seed, INIT_STREAM, 0));
        let n = init.len();
        let params = vec![b.alloc_from(&init)?];
        let grads = vec![b.alloc::<f32>(n)?];
        let est_grads = if cfg.optimizer.is_ire() {
            vec![b.alloc::<f32>(n)?]
        } else {
            Vec::new()
        };
        let spe = data.steps_per_epoch();
        let total_steps = if cfg.steps > 0 {
            cfg.steps
        } else {
            cfg.epochs * spe
        };
        let schedule = if cfg.constant_lr {
            LrSchedule::Constant { lr: cfg.lr }
        } else {
            LrSchedule::WarmupCosine {
                lr_max: cfg.lr,
                lr_min: cfg.lr * cfg.lr_min_ratio,
                warmup_steps: cfg.warmup_steps.min(total_steps),
                total_steps,
            }
        };
        schedule.validate()?;
        let opt = AnyOptimizer::new(cfg.optimizer, &cfg.opt, cfg.lr)?;
        let (x, y, dlogits, uniforms, sampled) = (
            b.alloc(0)?,
            b.alloc(0)?,
            b.alloc(0)?,
            b.alloc(0)?,
            b.alloc(0)?,
        );
        Ok(Trainer {
            b,
            model,
            params,
            grads,
            est_grads,
            opt,
            data,
            x,
            y,
            dlogits,
            uniforms,
            sampled,
            fixed: None,
            schedule,
            total_steps,
            step: 0,
            cfg,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.b
    }

    /// The model.
    pub fn model(&self) -> &dyn Model<B, f32> {
        self.model.as_ref()
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.data.steps_per_epoch()
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.model.layout().len()
    }

    /// The data source.
    pub fn data(&self) -> &Source {
        &self.data
    }

    /// The model's non-parameter state (batch-norm running statistics), on the host.
    pub fn model_state_host(&self) -> CoreResult<Vec<(String, Vec<f32>)>> {
        self.model
            .state()
            .into_iter()
            .map(|(n, b)| Ok((n, self.b.to_vec(b)?)))
            .collect()
    }

    /// The optimizer's state.
    pub fn optimizer_state(&self) -> CoreResult<ire_core::state::StateDict> {
        self.opt.save(&self.b)
    }

    /// Restores step, parameters, model state and optimizer state; checks everything first,
    /// so a failure changes nothing.
    pub fn restore_parts(
        &mut self,
        step: u64,
        params: &[f32],
        state: &[(String, Vec<f32>)],
        opt: &ire_core::state::StateDict,
    ) -> Result<(), TrainError> {
        let n = self.param_count();
        if params.len() != n {
            return Err(TrainError::WrongLength {
                what: "the checkpoint's parameters".into(),
                found: params.len(),
                expected: n,
            });
        }
        let names: Vec<(String, usize)> = self
            .model
            .state()
            .iter()
            .map(|(k, b)| (k.clone(), self.b.len(*b)))
            .collect();
        for ((name, len), (sn, sv)) in names.iter().zip(state) {
            if name != sn {
                return Err(TrainError::StateName {
                    found: sn.clone(),
                    expected: name.clone(),
                });
            }
            if *len != sv.len() {
                return Err(TrainError::WrongLength {
                    what: format!("the checkpoint's model state `{sn}`"),
                    found: sv.len(),
                    expected: *len,
                });
            }
        }
        // The optimizer validates and loads all-or-nothing; then nothing below can fail
        // except a device error.
        self.opt.load(&self.b, opt)?;
        self.b.upload(&mut self.params[0], params)?;
        for ((_, buf), (_, v)) in self.model.state_mut().into_iter().zip(state) {
            self.b.upload(buf, v)?;
        }
        self.step = step;
        Ok(())
    }

    /// The parameters, on the host.
    pub fn params_host(&self) -> CoreResult<Vec<f32>> {
        self.b.to_vec(&self.params[0])
    }

    /// The estimator gradient `ĝ` of the last estimator pass, on the host (`None` for the base
    /// optimizers, which have none; zeros before the first pass).
    pub fn estimator_gradient_host(&self) -> CoreResult<Option<Vec<f32>>> {
        self.est_grads.first().map(|g| self.b.to_vec(g)).transpose()
    }

    /// The uniform numbers `u ∈ [0, 1)` from which the estimator pass of step `step` samples
    /// the label of each of its `rows` logit rows (row `i`: the class whose softmax interval
    /// holds `u_i`); a function of the seed and the step only, so a resumed run draws the same.
    pub fn estimator_uniforms(&self, step: u64, rows: usize) -> Vec<f32> {
        let mut rng = Rng::derive(self.cfg.seed, SAMPLE_STREAM, step);
        (0..rows).map(|_| rng.uniform() as f32).collect()
    }

    /// Uploads a batch into the input and label buffers.
    fn upload(&mut self, batch: &Batch) -> CoreResult<()> {
        if let Some(vocab) = self.model.token_vocab() {
            check_token_ids(&batch.x, vocab)?;
        }
        if self.b.len(&self.x) != batch.x.len() || self.b.len(&self.y) != batch.y.len() {
            self.x = self.b.alloc(batch.x.len())?;
            self.y = self.b.alloc(batch.y.len())?;
        }
        self.b.upload(&mut self.x, &batch.x)?;
        let labels: Vec<f32> = batch.y.iter().map(|&l| l as f32).collect();
        self.b.upload(&mut self.y, &labels)
    }

    fn ensure_logit_buffers(&mut self, n: usize) -> CoreResult<()> {
        let c = self.model.num_classes();
        if self.b.len(&self.dlogits) != n * c {
            self.dlogits = self.b.alloc(n * c)?;
            self.uniforms = self.b.alloc(n)?;
            self.sampled = self.b.alloc(n)?;
        }
        Ok(())
    }

    /// Logit rows of `n` examples.
    fn rows(&self, n: usize) -> usize {
        n * self.model.rows_per_example()
    }

    /// Puts micro-batch `r` of `batch` into the input buffers: uploaded unless it is the whole
    /// batch and the caller says the whole batch is already there.
    fn upload_part(&mut self, batch: &Batch, r: &Range<usize>, uploaded: bool) -> CoreResult<()> {
        if r.len() == batch.n {
            if !uploaded {
                self.upload(batch)?;
            }
            Ok(())
        } else {
            self.upload(&batch.examples(r.clone()))
        }
    }

    /// Forward + loss + backward of `batch` into `self.grads` (zeroed first), in `parts`
    /// micro-batches (`cfg.grad_accum` for a training step): the model's backward adds into the gradient and every
    /// micro-batch's loss gradient is scaled by 1/rows of the WHOLE batch, so the sum is the
    /// whole batch's mean gradient (equal to one large batch up to the order of the sums).
    /// `uploaded`: the batch is already in the input buffers. Returns the mean loss per logit
    /// row and the number of correct rows.
    fn loss_and_grad(
        &mut self,
        batch: &Batch,
        parts: usize,
        uploaded: bool,
        mode: BnMode,
    ) -> Result<(f64, usize), TrainError> {
        let c = self.model.num_classes();
        let total_rows = self.rows(batch.n);
        self.b.fill(&mut self.grads[0], 0.0f32)?;
        let (mut loss_sum, mut correct) = (0.0, 0);
        for r in Batch::micro_ranges(batch.n, parts) {
            let (n, rows) = (r.len(), self.rows(r.len()));
            self.upload_part(batch, &r, uploaded)?;
            self.ensure_logit_buffers(rows)?;
            self.model
                .forward(&self.b, &self.params[0], &self.x, n, mode)?;
            let (loss, ok) = self
                .b
                .softmax_xent(
                    self.model.logits(),
                    &self.y,
                    rows,
                    c,
                    self.cfg.label_smoothing,
                    1.0 / total_rows as f64,
                    &mut self.dlogits,
                )
                .map_err(|e| TrainError::Diverged {
                    step: self.step,
                    what: e.to_string(),
                })?;
            self.model.backward(
                &self.b,
                &self.params[0],
                &mut self.grads[0],
                &self.x,
                &self.dlogits,
                n,
            )?;
            loss_sum += loss;
            correct += ok;
        }
        Ok((loss_sum / total_rows as f64, correct))
    }

    /// Scales the training gradient to the clipping norm when it is larger.
    fn clip(&mut self) -> Result<(), TrainError> {
        let norm = (self.b.sum_squares(&self.grads[0])? as f64).sqrt();
        if !norm.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                what: format!("gradient norm {norm}"),
            });
        }
        let c = self.cfg.clip_grad_norm;
        if c > 0.0 && norm > c {
            self.b
                .scale(&mut self.grads[0], (c / (norm + 1e-6)) as f32)?;
        }
        Ok(())
    }

    /// The estimator gradient ĝ: labels sampled from the model's softmax on the estimator
    /// batch, batch-norm statistics frozen; written into `est_grads`, accumulated over the
    /// micro-batches like the training gradient. Each micro-batch samples with its own rows of
    /// the step's uniforms, so the labels are those of one pass over the whole batch.
    fn estimator_pass(&mut self, batch: &Batch, uploaded: bool) -> Result<(), TrainError> {
        let c = self.model.num_classes();
        let total_rows = self.rows(batch.n);
        let u = self.estimator_uniforms(self.step, total_rows);
        self.b.fill(&mut self.est_grads[0], 0.0f32)?;
        for r in Batch::micro_ranges(batch.n, self.cfg.grad_accum) {
            let (n, rows) = (r.len(), self.rows(r.len()));
            self.upload_part(batch, &r, uploaded)?;
            self.ensure_logit_buffers(rows)?;
            self.model.forward(
                &self.b,
                &self.params[0],
                &self.x,
                n,
                BnMode::Train {
                    update_running: false,
                },
            )?;
            let first = self.rows(r.start);
            self.b.upload(&mut self.uniforms, &u[first..first + rows])?;
            self.b.sample_labels(
                self.model.logits(),
                rows,
                c,
                &self.uniforms,
                &mut self.sampled,
            )?;
            self.b
                .softmax_xent(
                    self.model.logits(),
                    &self.sampled,
                    rows,
                    c,
                    0.0,
                    1.0 / total_rows as f64,
                    &mut self.dlogits,
                )
                .map_err(|e| TrainError::Diverged {
                    step: self.step,
                    what: e.to_string(),
                })?;
            self.model.backward(
                &self.b,
                &self.params[0],
                &mut self.est_grads[0],
                &self.x,
                &self.dlogits,
                n,
            )?;
        }
        Ok(())
    }

    /// The estimator pass and the training pass on one forward of the current batch: per
    /// micro-batch, one forward (batch-norm statistics updated), labels sampled from its
    /// logits with the step's uniforms and backward into `est_grads`, then the true labels and
    /// backward into `grads`. The same numbers as [`Self::estimator_pass`] followed by
    /// [`Self::loss_and_grad`], one forward pass fewer. Returns what `loss_and_grad` does.
    fn shared_pass(&mut self, batch: &Batch) -> Result<(f64, usize), TrainError> {
        let c = self.model.num_classes();
        let total_rows = self.rows(batch.n);
        let u = self.estimator_uniforms(self.step, total_rows);
        let diverged = |step: u64| {
            move |e: ire_core::Error| TrainError::Diverged {
                step,
                what: e.to_string(),
            }
        };
        self.b.fill(&mut self.est_grads[0], 0.0f32)?;
        self.b.fill(&mut self.grads[0], 0.0f32)?;
        let (mut loss_sum, mut correct) = (0.0, 0);
        for r in Batch::micro_ranges(batch.n, self.cfg.grad_accum) {
            let (n, rows) = (r.len(), self.rows(r.len()));
            self.upload_part(batch, &r, false)?;
            self.ensure_logit_buffers(rows)?;
            let mode = BnMode::Train {
                update_running: true,
            };
            self.model
                .forward(&self.b, &self.params[0], &self.x, n, mode)?;
            let first = self.rows(r.start);
            self.b.upload(&mut self.uniforms, &u[first..first + rows])?;
            let logits = self.model.logits();
            self.b
                .sample_labels(logits, rows, c, &self.uniforms, &mut self.sampled)?;
            let scale = 1.0 / total_rows as f64;
            self.b
                .softmax_xent(
                    logits,
                    &self.sampled,
                    rows,
                    c,
                    0.0,
                    scale,
                    &mut self.dlogits,
                )
                .map_err(diverged(self.step))?;
            self.model.backward(
                &self.b,
                &self.params[0],
                &mut self.est_grads[0],
                &self.x,
                &self.dlogits,
                n,
            )?;
            let (loss, ok) = self
                .b
                .softmax_xent(
                    self.model.logits(),
                    &self.y,
                    rows,
                    c,
                    self.cfg.label_smoothing,
                    scale,
                    &mut self.dlogits,
                )
                .map_err(diverged(self.step))?;
            self.model.backward(
                &self.b,
                &self.params[0],
                &mut self.grads[0],
                &self.x,
                &self.dlogits,
                n,
            )?;
            loss_sum += loss;
            correct += ok;
        }
        Ok((loss_sum / total_rows as f64, correct))
    }

    /// One optimizer step on the next batch.
    pub fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        let spe = self.steps_per_epoch();
        let epoch = self.step / spe;
        let batch = self.data.train_batch(self.step);
        let n = batch.n;
        let rows = self.rows(n);
        let lr = self.schedule.lr_at(self.step);
        // 1. The IRE estimator pass, when a refresh is due: on the current batch from the
        //    training forward itself (shared), else a pass of its own, which on the current
        //    batch leaves the batch uploaded for the training pass.
        let want_est = self.opt.wants_estimate();
        let current = self.cfg.estimator_batch == EstimatorBatch::Current;
        let shared = want_est && current && self.cfg.estimator_forward == EstimatorForward::Shared;
        let mut uploaded = false;
        if want_est && !shared {
            if current {
                self.estimator_pass(&batch, false)?;
                uploaded = true;
            } else {
                let fixed = match self.fixed.take() {
                    Some(f) => f,
                    None => self.data.fixed_batch(),
                };
                let done = self.estimator_pass(&fixed, false);
                self.fixed = Some(fixed);
                done?;
            }
        }
        // 2. The training gradient (batch-norm statistics move with every forward here).
        let accum = self.cfg.grad_accum;
        let (loss, correct) = if shared {
            self.shared_pass(&batch)?
        } else {
            self.loss_and_grad(
                &batch,
                accum,
                uploaded,
                BnMode::Train {
                    update_running: true,
                },
            )?
        };
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                what: format!("training loss {loss}"),
            });
        }
        self.clip()?;
        // 3. SAM: perturb (SAM-IRE refreshes its mask here, at the unperturbed θ), then the
        //    gradient at the perturbed point (statistics frozen).
        if self.cfg.optimizer.is_sam() {
            let est = want_est.then_some(&self.est_grads[..]);
            self.opt
                .perturb(&self.b, &mut self.params, &self.grads, est)?;
            self.loss_and_grad(
                &batch,
                accum,
                true,
                BnMode::Train {
                    update_running: false,
                },
            )?;
            self.clip()?;
        }
        let (params, grads, est_grads) = (&mut self.params, &self.grads, &self.est_grads);
        let est = if want_est && !self.cfg.optimizer.is_sam() {
            Some(&est_grads[..])
        } else {
            None
        };
        let (kappa, refreshed) = self.opt.step(&self.b, params, grads, lr, est)?;
        let m = StepMetrics {
            step: self.step,
            epoch,
            lr,
            loss,
            acc: correct as f64 / rows as f64,
            kappa,
            refreshed,
            n,
        };
        self.step += 1;
        Ok(m)
    }

    /// The training loss the next step will see (its batch at the current parameters, batch
    /// norm on batch statistics, running ones unchanged), without taking the step: a
    /// checkpoint is only written from parameters where it is finite.
    pub fn next_loss(&mut self) -> Result<f64, TrainError> {
        let batch = self.data.train_batch(self.step);
        let c = self.model.num_classes();
        let mode = BnMode::Train {
            update_running: false,
        };
        let mut loss_sum = 0.0;
        for r in Batch::micro_ranges(batch.n, self.cfg.grad_accum) {
            let (n, rows) = (r.len(), self.rows(r.len()));
            self.upload_part(&batch, &r, false)?;
            self.ensure_logit_buffers(rows)?;
            self.model
                .forward(&self.b, &self.params[0], &self.x, n, mode)?;
            let (loss, _) = self
                .b
                .softmax_xent(
                    self.model.logits(),
                    &self.y,
                    rows,
                    c,
                    self.cfg.label_smoothing,
                    1.0,
                    &mut self.dlogits,
                )
                .map_err(|e| TrainError::Diverged {
                    step: self.step,
                    what: e.to_string(),
                })?;
            loss_sum += loss;
        }
        Ok(loss_sum / self.rows(batch.n) as f64)
    }

    /// Mean training loss and its gradient at parameters `theta`, over the first `batches`
    /// training batches in a fixed order without augmentation; batch norm uses batch
    /// statistics without updating the running ones, so this is a deterministic function of
    /// `theta` (what Hessian-vector products by finite differences need). The trainer's own
    /// parameters are left unchanged.
    pub fn loss_grad_at(
        &mut self,
        theta: &[f32],
        batches: usize,
    ) -> Result<(f64, Vec<f32>), TrainError> {
        let n_params = self.param_count();
        if theta.len() != n_params {
            return Err(TrainError::WrongLength {
                what: "theta".into(),
                found: theta.len(),
                expected: n_params,
            });
        }
        let saved = self.params_host()?;
        self.b.upload(&mut self.params[0], theta)?;
        let probe = self.data.probe_batches(self.cfg.batch_size.max(1), batches);
        let mut total = vec![0f64; n_params];
        let mut loss = 0.0;
        let mut seen = 0usize;
        let result = (|| -> Result<(), TrainError> {
            for batch in &probe {
                let rows = self.rows(batch.n);
                let (l, _) = self.loss_and_grad(
                    batch,
                    1,
                    false,
                    BnMode::Train {
                        update_running: false,
                    },
                )?;
                let g = self.b.to_vec(&self.grads[0])?;
                for (t, v) in total.iter_mut().zip(&g) {
                    *t += *v as f64 * rows as f64;
                }
                loss += l * rows as f64;
                seen += rows;
            }
            Ok(())
        })();
        self.b.upload(&mut self.params[0], &saved)?;
        result?;
        let inv = 1.0 / seen.max(1) as f64;
        Ok((
            loss * inv,
            total.into_iter().map(|v| (v * inv) as f32).collect(),
        ))
    }

    /// Loss and accuracy on the test split (images) or the validation split (text: per token,
    /// perplexity = exp(loss)); batch norm in evaluation mode.
    pub fn evaluate(&mut self) -> Result<EvalMetrics, TrainError> {
        let batches = self
            .data
            .eval_batches(self.cfg.batch_size.max(1), self.cfg.eval_batches);
        let (mut loss, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let c = self.model.num_classes();
        for batch in &batches {
            let rows = self.rows(batch.n);
            self.ensure_logit_buffers(rows)?;
            self.upload(batch)?;
            self.model
                .forward(&self.b, &self.params[0], &self.x, batch.n, BnMode::Eval)?;
            let (l, k) = self
                .b
                .softmax_xent(
                    self.model.logits(),
                    &self.y,
                    rows,
                    c,
                    0.0,
                    1.0,
                    &mut self.dlogits,
                )
                .map_err(|e| TrainError::Diverged {
                    step: self.step,
                    what: e.to_string(),
                })?;
            loss += l;
            correct += k;
            seen += rows;
        }
        Ok(EvalMetrics {
            loss: loss / seen.max(1) as f64,
            acc: correct as f64 / seen.max(1) as f64,
            n: seen,
        })
    }

    /// Continues `prompt` by `tokens` tokens sampled from a language model at `temperature`
    /// (0: greedy). The model takes full windows: the last `context` tokens are placed at the
    /// start of the window and the prediction is read at the last real position, which causal
    /// attention makes independent of the filler after it.
    pub fn sample(
        &mut self,
        prompt: &str,
        tokens: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<String, TrainError> {
        let tok = self.data.tokenizer().ok_or(TrainError::NotLanguageModel)?;
        let mut ids = tok.encode(prompt)?;
        let ctx = self.model.rows_per_example();
        let c = self.model.num_classes();
        let mut rng = Rng::new(seed);
        let start = ids.len();
        for _ in 0..tokens {
            let window: Vec<u32> = ids[ids.len().saturating_sub(ctx)..].to_vec();
            let last = window.len().max(1) - 1;
            let mut x: Vec<f32> = window.iter().map(|&v| v as f32).collect();
            x.resize(ctx, 0.0);
            check_token_ids(&x, c)?;
            if self.b.len(&self.x) != ctx {
                self.x = self.b.alloc(ctx)?;
            }
            self.b.upload(&mut self.x, &x)?;
            self.model
                .forward(&self.b, &self.params[0], &self.x, 1, BnMode::Eval)?;
            let logits = self.b.to_vec(self.model.logits())?;
            let row = &logits[last * c..(last + 1) * c];
            let next = if temperature == 0.0 {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |a, (i, &v)| if v > a.1 { (i, v) } else { a },
                    )
                    .0
            } else {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let p: Vec<f64> = row
                    .iter()
                    .map(|&v| ((v as f64 - m) / temperature).exp())
                    .collect();
                let z: f64 = p.iter().sum();
                let probs: Vec<f32> = p.iter().map(|v| (v / z) as f32).collect();
                rng.categorical(&probs)
            };
            ids.push(next as u32);
        }
        let tok = self.data.tokenizer().ok_or(TrainError::NotLanguageModel)?;
        let text = tok.decode(&ids[start..])?;
        Ok(format!("{prompt}{text}"))
    }
}
