//! One training step, evaluation, and the state a checkpoint must hold to resume exactly.
//!
//! A step: (when an IRE refresh is due) the estimator pass on labels sampled from the model's
//! own softmax, with batch-norm statistics frozen; the training forward/backward (statistics
//! updated); optional clipping of the training gradient; for SAM the second forward/backward
//! at the perturbed point (statistics frozen); the optimizer step at the scheduled rate.
//! Every random choice is derived from `(seed, step)`, so a resumed run is bit-identical.
//!
//! # Data parallelism
//!
//! A trainer given a [`Collective`] ([`Trainer::with_collective`]) is one rank of a group that
//! trains one model. Every rank draws the same step batch (same seed, same step) and computes
//! the gradients of its share of it; the training gradient, the estimator gradient, the loss
//! sum and the correct count are summed over the ranks, each loss gradient being scaled by
//! 1/rows of the WHOLE step batch, so every rank holds the mean gradient of the whole batch.
//! Everything after that (clipping, SAM's perturbation, the optimizer step, IRE's threshold)
//! runs on every rank on identical numbers, so the parameters stay identical on every rank.
//! The shares, for a step batch of `n` examples over `W` ranks:
//! - without `shards`: rank `r` takes part `r` of `Batch::micro_ranges(n, W)` (cut again into
//!   `grad_accum` micro-batches), and the gradients are all-reduced; the rounding of that sum
//!   depends on `W` and on the transport;
//! - with `shards = G` (a multiple of `W`): the batch is always cut into the same `G` shards,
//!   rank `r` computes shards `r, r + W, …` each into a gradient of its own, every rank gathers
//!   all `G` shard gradients and adds them in shard order `0, 1, …, G − 1`: the same
//!   additions whatever `W`, so runs on any `W` dividing `G` agree bit for bit. The cost: an
//!   all-gather of `G` gradients (`G × 4` bytes per parameter to every rank, and as much memory)
//!   instead of an all-reduce of one; fine for small models. For large ones, a fixed-order
//!   reduction that moves one gradient (a chain or a tree over the shards with the order fixed
//!   by shard, not by rank) would keep the guarantee at the cost of an all-reduce.
//!
//! # Sharded optimizer state
//!
//! With `optimizer_state = sharded` (ZeRO stage 1, [`super::shard_state`]) each rank holds the
//! optimizer state (moments, IRE estimate and mask) of its own range of the arena only and
//! steps only that range; the parameters are then all-gathered. With `shards` the gradients
//! are gathered by shard as above and each rank slices its range: the same sums as a
//! replicated run, bit for bit. Without, the gradient and the estimator gradient are
//! reduce-scattered (the arena padded to `W × chunk`, each rank receives its range's sums and
//! never holds the whole sum): half the all-reduce's traffic, equal to the replicated run
//! within rounding. Whole-gradient quantities then come from the shards: the clipping norm
//! and SAM's perturbation norm are each rank's partial sum of squares (`f64`), all-reduced.
//! IRE's threshold is ONE selection over the estimates of every rank
//! ([`ire_core::collective::select`]), so the mask is the one a replicated run derives from
//! the same estimates. SAM's perturbation divides by the norm of the whole gradient; every
//! rank perturbs its own range, and the ranges are all-gathered for the second pass.
//!
//! Batch-norm statistics are per rank by default: each forward normalizes with the statistics
//! of the examples it sees (a rank's micro-batch or shard), and each rank's running statistics
//! follow its own examples; a checkpoint and the weights file hold rank 0's.
//!
//! # Synchronized batch norm
//!
//! With `sync_bn` every batch-norm layer of a training pass (the estimator's and SAM's second
//! pass included) takes its statistics over the examples of that pass on ALL ranks
//! ([`super::sync_bn`]): the sums of each image are gathered and added in the order of the
//! images in the batch, so with one micro-batch the statistics (and the running statistics,
//! identical on every rank) are those of one process holding the whole batch, bit for bit, at
//! any world size; only the gradient's all-reduce rounds differently. With `grad_accum` a pass
//! is the j-th micro-batch of every rank together. Every rank must hold an example of every
//! pass (a step batch of at least `W × grad_accum` examples), else the step is refused on
//! every rank alike. It does not combine with `shards` (refused by the configuration): a rank
//! runs its shards one forward after the other, while statistics over the whole batch would
//! need all of them to advance layer by layer together. A single process has nothing to sync
//! (its batch is the whole batch): there `sync_bn` changes nothing.

use std::ops::Range;
use std::rc::Rc;

use ire_core::collective::{BufMut, SingleProcess};
use ire_core::optim::{ParamGroup, ParamGroups};
use ire_core::{Collective, LrSchedule, Result as CoreResult};

use super::choices::OptimizerStateLayout;
use super::choices::{EstimatorBatch, EstimatorForward};
use super::config::TrainConfig;
use super::config_error::ConfigError;
use super::optimizer::{AnyOptimizer, MaskSummary};
use super::shard_state::{self, ShardLayout};
use super::source::{Input, Source};
use super::sync_bn::GroupBnSync;
use super::train_error::TrainError;
use crate::data::{Batch, ImageDataset};
use crate::models::{Model, ModelSpec};
use crate::nn::layers::Layout;
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

/// Which examples of a batch this process computes, and how their gradients combine.
enum Plan {
    /// Micro-batches summed into one gradient here, nothing shared (a single process, or a
    /// computation of this rank alone).
    Local(Vec<Range<usize>>),
    /// This rank's micro-batches summed into one gradient, then all-reduced over the ranks.
    Reduce {
        /// This rank's micro-batches.
        mine: Vec<Range<usize>>,
        /// The lengths of every rank's micro-batches, rank by rank.
        everyone: Vec<Vec<usize>>,
    },
    /// Of `count` shards, this rank's (shards `rank, rank + W, …`, in that order), each
    /// computed into a gradient of its own; every shard gradient is gathered and they are
    /// added in shard order.
    Shards {
        /// G.
        count: usize,
        /// This rank's shards.
        mine: Vec<Range<usize>>,
    },
}

/// The gradient arenas a pass writes.
#[derive(Clone, Copy)]
struct Targets {
    train: bool,
    est: bool,
}

/// The labels a loss is taken against: the batch's own, or those sampled from the model.
#[derive(Clone, Copy)]
enum Labels {
    /// The batch's labels (`y`), with the run's label smoothing.
    True,
    /// The labels sampled for the estimator (`sampled`), without smoothing.
    Sampled,
}

/// The gradient arena and, when given, the estimator's: the buffers cut into parts beside the
/// parameters.
fn arena_and<'a, X>(grads: &'a [X], est: Option<&'a [X]>) -> Vec<&'a X> {
    core::iter::once(&grads[0])
        .chain(est.map(|e| &e[0]))
        .collect()
}

/// The estimator's gradient arena (`est`) or the training one, from the two fields, so that
/// the rest of the trainer stays borrowable beside it.
fn arena<'a, X>(est: bool, grads: &'a mut [X], est_grads: &'a mut [X]) -> &'a mut X {
    if est {
        &mut est_grads[0]
    } else {
        &mut grads[0]
    }
}

/// Replaces every rank's range of `params` with what that rank holds (one all-gather of the
/// ranges, each padded to the layout's chunk).
fn gather_params<B: NnOps>(
    b: &B,
    params: &mut B::Buffer<f32>,
    layout: &ShardLayout,
    comm: &dyn Collective,
) -> CoreResult<()> {
    let host = b.to_vec(params)?;
    let r = layout.ranges[comm.rank()].clone();
    let mut mine = vec![0f32; layout.chunk];
    mine[..r.len()].copy_from_slice(&host[r]);
    let mut all = vec![0f32; layout.chunk * comm.world_size()];
    comm.all_gather(mine.as_slice().into(), BufMut::F32(&mut all))?;
    all.truncate(host.len());
    b.upload(params, &all)
}

/// Reduce-scatters the local gradient `host` (the whole arena) over the ranks of `comm`: the
/// arena padded to `W × chunk`, each rank receives the sums of its own range of `layout`.
/// Afterwards `host` holds those sums in this rank's range and zeros everywhere else.
fn reduce_scatter_range(
    host: &mut Vec<f32>,
    layout: &ShardLayout,
    comm: &dyn Collective,
) -> CoreResult<()> {
    let (n, r) = (host.len(), layout.ranges[comm.rank()].clone());
    host.resize(layout.chunk * comm.world_size(), 0.0);
    let mut mine = vec![0f32; layout.chunk];
    comm.reduce_scatter_sum(host.as_slice().into(), BufMut::F32(&mut mine))?;
    host.truncate(n);
    host.fill(0.0);
    host[r.clone()].copy_from_slice(&mine[..r.len()]);
    Ok(())
}

/// `n` examples in exactly `parts` near-equal consecutive ranges ([`Batch::micro_ranges`]),
/// the last ones empty when `n < parts`.
fn exact_ranges(n: usize, parts: usize) -> Vec<Range<usize>> {
    let mut r = Batch::micro_ranges(n, parts);
    if n == 0 {
        r.clear();
    }
    r.resize(parts, n..n);
    r
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
    comm: Option<Rc<dyn Collective>>,
    /// Synchronized batch norm over the group (`sync_bn` with a group), active during the
    /// training passes.
    bn_sync: Option<Rc<GroupBnSync>>,
    /// The optimizer's parameter groups as parts of the arena (`None`: one group).
    groups: Option<StepGroups>,
    /// This rank's share of a sharded optimizer state (`None`: replicated).
    shard: Option<ShardState>,
    /// Bytes of optimizer state each rank holds, once measured
    /// ([`Trainer::measure_optimizer_state`]).
    state_bytes: Vec<u64>,
    /// Steps taken.
    pub step: u64,
}

/// A rank's share of a sharded optimizer state: the layout over the group, and the parameter
/// groups of this rank's pieces (`None`: one group).
struct ShardState {
    layout: ShardLayout,
    groups: Option<ParamGroups>,
}

/// The parameter groups of the optimizer steps: consecutive runs of the arena's tensors with
/// the same weight-decay flag, each run a part of the arena stepped as a tensor of its own.
struct StepGroups {
    /// Elements of each part, in arena order.
    lens: Vec<usize>,
    /// The group of each part (0 decays, 1 does not).
    of_part: Vec<usize>,
    /// Group 0 decays, group 1 does not; part `i` is in `groups.group_of(i)`.
    groups: ParamGroups,
}

impl StepGroups {
    /// The groups `cfg` asks for on `layout`: none when every parameter decays (`decay_all`,
    /// no weight decay at all, or a model without norms, biases or embeddings).
    fn of(layout: &Layout, cfg: &TrainConfig) -> CoreResult<Option<Self>> {
        if cfg.decay_all || cfg.opt.weight_decay == 0.0 {
            return Ok(None);
        }
        let (mut lens, mut of_part) = (Vec::new(), Vec::new());
        for (slot, &decay) in layout.slots.iter().zip(&layout.decay) {
            let group = usize::from(!decay);
            match (lens.last_mut(), of_part.last()) {
                (Some(len), Some(&last)) if last == group => *len += slot.len(),
                _ => {
                    lens.push(slot.len());
                    of_part.push(group);
                }
            }
        }
        if of_part.iter().all(|&g| g == 0) {
            return Ok(None);
        }
        let groups = Self::groups(of_part.clone())?;
        Ok(Some(StepGroups {
            lens,
            of_part,
            groups,
        }))
    }

    /// Group 0 decays, group 1 does not; tensor `i` is in `of_part[i]`.
    fn groups(of_part: Vec<usize>) -> CoreResult<ParamGroups> {
        ParamGroups::new(vec![ParamGroup::default(), ParamGroup::no_decay()], of_part)
    }
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
        let mut model = match data.input() {
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
        if cfg.sync_bn && model.batch_norms_mut().is_empty() {
            return Err(ConfigError::OutOfRange {
                field: "sync_bn",
                value: format!("true with --model {}", cfg.model),
                why: "synchronizes batch-norm statistics, and this model has no batch norm",
            }
            .into());
        }
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
        let groups = StepGroups::of(model.layout(), &cfg)?;
        let opt = AnyOptimizer::new(
            cfg.optimizer,
            &cfg.opt,
            cfg.lr,
            groups.as_ref().map(|g| &g.groups),
        )?;
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
            comm: None,
            bn_sync: None,
            groups,
            shard: None,
            state_bytes: Vec::new(),
            step: 0,
            cfg,
        })
        .and_then(|t| t.shard_over(1))
    }

    /// With a sharded optimizer state, this rank's share of it over `world` ranks: the
    /// optimizer is built again over this rank's pieces (before the first step).
    fn shard_over(mut self, world: usize) -> Result<Self, TrainError> {
        if self.cfg.optimizer_state != OptimizerStateLayout::Sharded {
            return Ok(self);
        }
        let parts = match &self.groups {
            Some(g) => g.lens.clone(),
            None => vec![self.param_count()],
        };
        let layout = ShardLayout::new(&parts, world);
        let pieces = &layout.pieces[self.rank().min(world - 1)];
        let groups = match &self.groups {
            Some(g) if !pieces.is_empty() => Some(StepGroups::groups(
                pieces.iter().map(|p| g.of_part[p.part]).collect(),
            )?),
            _ => None,
        };
        self.opt = AnyOptimizer::new(
            self.cfg.optimizer,
            &self.cfg.opt,
            self.cfg.lr,
            groups.as_ref(),
        )?;
        self.shard = Some(ShardState { layout, groups });
        Ok(self)
    }

    /// Makes this trainer one rank of the data-parallel group `comm` (see the module
    /// documentation), before its first step. Every rank of the group must be built from the
    /// same configuration and data and take the same steps. Refused when `shards` is set and
    /// is not a multiple of the group's size. The trainer owns the handle; it is not `Send`
    /// (MPI wants its calls from the thread that started it).
    pub fn with_collective(mut self, comm: Box<dyn Collective>) -> Result<Self, TrainError> {
        let w = comm.world_size();
        if let Some(g) = self.cfg.shards
            && !g.is_multiple_of(w)
        {
            return Err(ConfigError::OutOfRange {
                field: "shards",
                value: format!("{g} on {w} processes"),
                why: "must be a multiple of the number of processes",
            }
            .into());
        }
        let comm: Rc<dyn Collective> = Rc::from(comm);
        if self.cfg.sync_bn {
            let sync = Rc::new(GroupBnSync::new(comm.clone()));
            for bn in self.model.batch_norms_mut() {
                bn.set_sync(sync.clone());
            }
            self.bn_sync = Some(sync);
        }
        self.comm = Some(comm);
        self.shard_over(w)
    }

    /// Whether this trainer holds only its share of a sharded optimizer state (then
    /// [`Trainer::optimizer_state`] and [`Trainer::mask_summary`] are collective: every rank
    /// calls them at the same point).
    pub fn shards_optimizer_state(&self) -> bool {
        self.shard.is_some()
    }

    /// Measures the bytes of optimizer state every rank holds (collective: every rank calls it
    /// once, before the first step): each rank steps a copy of its optimizer once on zeros of
    /// its own parts' sizes, and counts the tensors of the state that copy saves (moments,
    /// estimate, mask: what the real one holds after its first step). Returns the bytes of
    /// each rank, in rank order; kept for [`Trainer::optimizer_state_bytes`].
    pub fn measure_optimizer_state(&mut self) -> Result<Vec<u64>, TrainError> {
        let sizes: Vec<usize> = match (&self.shard, &self.groups) {
            (Some(sh), _) => sh.layout.pieces[self.rank()]
                .iter()
                .map(|p| p.len)
                .collect(),
            (None, Some(g)) => g.lens.clone(),
            (None, None) => vec![self.param_count()],
        };
        let groups = match (&self.shard, &self.groups) {
            (Some(sh), _) => sh.groups.clone(),
            (None, g) => g.as_ref().map(|g| g.groups.clone()),
        };
        let b = &self.b;
        let mut probe = AnyOptimizer::new(
            self.cfg.optimizer,
            &self.cfg.opt,
            self.cfg.lr,
            groups.as_ref(),
        )?;
        let zeros = |n: usize| b.alloc::<f32>(n);
        let mut params = sizes
            .iter()
            .map(|&n| zeros(n))
            .collect::<CoreResult<Vec<_>>>()?;
        let grads = sizes
            .iter()
            .map(|&n| zeros(n))
            .collect::<CoreResult<Vec<_>>>()?;
        let est = probe.wants_estimate().then_some(&grads[..]);
        probe.perturb(b, &mut params, &grads, est)?;
        probe.step(
            b,
            &mut params,
            &grads,
            self.cfg.lr,
            est,
            groups.as_ref(),
            None,
        )?;
        let mine = [shard_state::tensor_bytes(&probe.save(b)?)];
        let mut all = vec![0u64; self.world_size()];
        self.comm()
            .all_gather((&mine[..]).into(), BufMut::U64(&mut all))?;
        self.state_bytes = all.clone();
        Ok(all)
    }

    /// The bytes of optimizer state of each rank, as [`Trainer::measure_optimizer_state`]
    /// measured them (empty before).
    pub fn optimizer_state_bytes(&self) -> &[u64] {
        &self.state_bytes
    }

    /// This process's rank in its data-parallel group (0 without one).
    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    /// The number of processes training together (1 without a group).
    pub fn world_size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world_size())
    }

    fn comm(&self) -> &dyn Collective {
        match &self.comm {
            Some(c) => c.as_ref(),
            None => &SingleProcess,
        }
    }

    /// Whether `local` holds on any rank (an all-reduce of one number): every rank calls it at
    /// the same point and gets the same answer, so all stop at the same step.
    pub fn any_rank(&self, local: bool) -> CoreResult<bool> {
        let mut v = [u32::from(local)];
        self.comm().all_reduce_sum(BufMut::U32(&mut v))?;
        Ok(v[0] > 0)
    }

    /// The IRE mask's flat count and hash (`None` for the base optimizers). With a sharded
    /// optimizer state every rank must call it (the ranks' masks are gathered).
    pub fn mask_summary(&self) -> CoreResult<Option<MaskSummary>> {
        if self.shard.is_none() {
            return self.opt.mask_summary(&self.b);
        }
        let Some(mine) = self.opt.mask_bytes(&self.b)? else {
            return Ok(None);
        };
        let mut s = MaskSummary::EMPTY;
        for m in shard_state::gather_bytes(self.comm(), &mine)? {
            s.add(&m);
        }
        Ok(Some(s))
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

    /// The optimizer's state, whole: with a sharded state, every rank's share is gathered and
    /// joined into the state a replicated run holds (every rank must call it).
    pub fn optimizer_state(&self) -> Result<ire_core::state::StateDict, TrainError> {
        let mine = self.opt.save(&self.b)?;
        let Some(sh) = &self.shard else {
            return Ok(mine);
        };
        let bytes = crate::artifacts::checkpoint::encode(&mine)?;
        let states = shard_state::gather_bytes(self.comm(), &bytes)?
            .iter()
            .map(|b| crate::artifacts::checkpoint::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(shard_state::merge(&sh.layout, &states)?)
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
        match &self.shard {
            None => self.opt.load(&self.b, opt)?,
            Some(sh) => {
                let mine = shard_state::slice(&sh.layout, opt, &sh.layout.pieces[self.rank()])?;
                self.opt.load(&self.b, &mine)?
            }
        }
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
    /// optimizers, which have none; zeros before the first pass). With a sharded optimizer
    /// state in a group without `shards` it is reduce-scattered: only this rank's range holds
    /// the sums, the rest is zeros.
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

    /// The loss sum and correct rows of the last forward's `rows` logit rows against the batch's
    /// labels (the loss gradient it writes is not used).
    fn loss_of_last_forward(
        &mut self,
        rows: usize,
        smoothing: f64,
    ) -> Result<(f64, usize), TrainError> {
        let c = self.model.num_classes();
        self.b
            .softmax_xent(
                self.model.logits(),
                &self.y,
                rows,
                c,
                smoothing,
                1.0,
                &mut self.dlogits,
            )
            .map_err(|e| TrainError::Diverged {
                step: self.step,
                what: e.to_string(),
            })
    }

    /// This rank's share of a step batch of `n` examples, in `accum` micro-batches (see the
    /// module documentation).
    fn plan(&self, n: usize, accum: usize) -> Plan {
        let (w, rank) = (self.world_size(), self.rank());
        match (self.cfg.shards, &self.comm) {
            (Some(count), _) => Plan::Shards {
                count,
                mine: exact_ranges(n, count)
                    .into_iter()
                    .skip(rank)
                    .step_by(w)
                    .collect(),
            },
            (None, None) => Plan::Local(Batch::micro_ranges(n, accum)),
            (None, Some(_)) => {
                let micro = |part: &Range<usize>| -> Vec<Range<usize>> {
                    if part.is_empty() {
                        Vec::new()
                    } else {
                        Batch::micro_ranges(part.len(), accum)
                            .into_iter()
                            .map(|r| r.start + part.start..r.end + part.start)
                            .collect()
                    }
                };
                let parts = exact_ranges(n, w);
                let everyone = parts
                    .iter()
                    .map(|p| micro(p).iter().map(|r| r.len()).collect())
                    .collect();
                Plan::Reduce {
                    mine: micro(&parts[rank]),
                    everyone,
                }
            }
        }
    }

    fn zero(&mut self, t: Targets) -> CoreResult<()> {
        for (on, est) in [(t.train, false), (t.est, true)] {
            if on {
                self.b
                    .fill(arena(est, &mut self.grads, &mut self.est_grads), 0.0f32)?;
            }
        }
        Ok(())
    }

    /// The cross-entropy of the last forward's `n` examples against `labels`, its gradient
    /// scaled by 1/`total_rows` back-propagated into the estimator gradient (`est`) or the
    /// training one: the model's backward ADDS into it. Returns the loss sum and the correct
    /// rows.
    fn xent_backward(
        &mut self,
        n: usize,
        labels: Labels,
        total_rows: usize,
        est: bool,
    ) -> Result<(f64, usize), TrainError> {
        let (rows, c) = (self.rows(n), self.model.num_classes());
        let (target, smoothing) = match labels {
            Labels::True => (&self.y, self.cfg.label_smoothing),
            Labels::Sampled => (&self.sampled, 0.0),
        };
        let (loss, ok) = self
            .b
            .softmax_xent(
                self.model.logits(),
                target,
                rows,
                c,
                smoothing,
                1.0 / total_rows as f64,
                &mut self.dlogits,
            )
            .map_err(|e| TrainError::Diverged {
                step: self.step,
                what: e.to_string(),
            })?;
        let grads = arena(est, &mut self.grads, &mut self.est_grads);
        self.model
            .backward(&self.b, &self.params[0], grads, &self.x, &self.dlogits, n)?;
        Ok((loss, ok))
    }

    /// Runs `body` (forward, loss, backward into the `targets` arenas; returns the loss sum and
    /// the correct rows of its range) over the ranges of `plan`, and leaves in the targets the
    /// gradient of all ranges of every rank; returns the loss sum and the correct rows of all.
    fn combined(
        &mut self,
        plan: Plan,
        targets: Targets,
        mut body: impl FnMut(&mut Self, &Range<usize>) -> Result<(f64, usize), TrainError>,
    ) -> Result<(f64, usize), TrainError> {
        let (ranges, everyone) = match plan {
            Plan::Local(r) => (r, None),
            Plan::Reduce { mine, everyone } => (mine, Some(everyone)),
            Plan::Shards { count, mine } => return self.sharded(count, mine, targets, body),
        };
        let reduce = everyone.is_some();
        let sync = match (everyone, &self.bn_sync) {
            (Some(e), Some(s)) => {
                // A rank without examples in a pass would leave the others waiting for its
                // sums: refused on every rank alike (they all cut the same batch).
                let ragged = e.iter().any(|m| m.len() != ranges.len() || m.contains(&0));
                if ragged || ranges.is_empty() {
                    let n: usize = e.iter().flatten().sum();
                    return Err(ConfigError::OutOfRange {
                        field: "sync_bn",
                        value: format!(
                            "a batch of {n} examples in {} micro-batches on {} processes",
                            self.cfg.grad_accum,
                            e.len()
                        ),
                        why: "needs an example of every micro-batch on every process (a batch \
                              of at least processes × grad_accum examples)",
                    }
                    .into());
                }
                Some((s.clone(), e))
            }
            _ => None,
        };
        self.zero(targets)?;
        let (mut loss_sum, mut correct) = (0.0, 0);
        for (j, r) in ranges.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            if let Some((s, e)) = &sync {
                s.set(Some(e.iter().map(|m| m[j]).collect()));
            }
            let done = body(self, r);
            if let Some((s, _)) = &sync {
                s.set(None);
            }
            let (l, k) = done?;
            loss_sum += l;
            correct += k;
        }
        if !reduce {
            return Ok((loss_sum, correct));
        }
        // Sharded state: reduce-scattered, ~P·(W−1)/W floats moved per rank instead of the
        // all-reduce's ~2P·(W−1)/W; each rank keeps only its range's sums (zeros elsewhere).
        let scatter = self.scattered().map(|sh| sh.layout.clone());
        for (on, est) in [(targets.train, false), (targets.est, true)] {
            if on {
                let mut host = self
                    .b
                    .to_vec(arena(est, &mut self.grads, &mut self.est_grads))?;
                match &scatter {
                    Some(layout) => reduce_scatter_range(&mut host, layout, self.comm())?,
                    None => self.comm().all_reduce_sum(BufMut::F32(&mut host))?,
                }
                self.b
                    .upload(arena(est, &mut self.grads, &mut self.est_grads), &host)?;
            }
        }
        // Correct counts are exact in an f64 up to 2^53.
        let mut sums = [loss_sum, correct as f64];
        self.comm().all_reduce_sum(BufMut::F64(&mut sums))?;
        Ok((sums[0], sums[1] as usize))
    }

    /// [`Self::combined`] for `count` shards: each of this rank's shards into a gradient of its
    /// own, all shard gradients gathered on every rank and added in shard order.
    fn sharded(
        &mut self,
        count: usize,
        mine: Vec<Range<usize>>,
        targets: Targets,
        mut body: impl FnMut(&mut Self, &Range<usize>) -> Result<(f64, usize), TrainError>,
    ) -> Result<(f64, usize), TrainError> {
        let (p, w, k) = (self.param_count(), self.world_size(), mine.len());
        let mut train = vec![0f32; if targets.train { k * p } else { 0 }];
        let mut est = vec![0f32; if targets.est { k * p } else { 0 }];
        let mut sums = vec![0f64; 2 * k];
        for (j, r) in mine.iter().enumerate() {
            self.zero(targets)?;
            if !r.is_empty() {
                let (l, c) = body(self, r)?;
                sums[2 * j] = l;
                sums[2 * j + 1] = c as f64;
            }
            if targets.train {
                self.b
                    .download(&self.grads[0], &mut train[j * p..(j + 1) * p])?;
            }
            if targets.est {
                self.b
                    .download(&self.est_grads[0], &mut est[j * p..(j + 1) * p])?;
            }
        }
        // Gathered in rank order: rank q's j-th shard (shard q + jW) is block qk + j.
        let block = |g: usize| (g % w) * k + g / w;
        for (on, host, is_est) in [(targets.train, &train, false), (targets.est, &est, true)] {
            if !on {
                continue;
            }
            let mut all = vec![0f32; count * p];
            self.comm()
                .all_gather(host.as_slice().into(), BufMut::F32(&mut all))?;
            let mut total = vec![0f32; p];
            for g in 0..count {
                let b = block(g) * p;
                for (t, v) in total.iter_mut().zip(&all[b..b + p]) {
                    *t += *v;
                }
            }
            self.b
                .upload(arena(is_est, &mut self.grads, &mut self.est_grads), &total)?;
        }
        let mut all = vec![0f64; 2 * count];
        self.comm()
            .all_gather(sums.as_slice().into(), BufMut::F64(&mut all))?;
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        for g in 0..count {
            loss_sum += all[2 * block(g)];
            correct += all[2 * block(g) + 1];
        }
        Ok((loss_sum, correct as usize))
    }

    /// Forward + loss + backward of `batch` into `self.grads` (zeroed first), over the ranges
    /// of `plan` (this rank's share of a training step in `cfg.grad_accum` micro-batches, or
    /// local ones): the model's backward adds into the gradient and every micro-batch's loss
    /// gradient is scaled by 1/rows of the WHOLE batch, so the sum is the whole batch's mean
    /// gradient (equal to one large batch up to the order of the sums).
    /// `uploaded`: the batch is already in the input buffers. Returns the mean loss per logit
    /// row and the number of correct rows.
    fn loss_and_grad(
        &mut self,
        batch: &Batch,
        plan: Plan,
        uploaded: bool,
        mode: BnMode,
    ) -> Result<(f64, usize), TrainError> {
        let total_rows = self.rows(batch.n);
        let targets = Targets {
            train: true,
            est: false,
        };
        let (loss_sum, correct) = self.combined(plan, targets, |t, r| {
            t.loss_and_grad_of(batch, r, uploaded, mode)
        })?;
        Ok((loss_sum / total_rows as f64, correct))
    }

    /// [`Self::loss_and_grad`]'s work on the examples `r` of `batch`: adds their gradient into
    /// `self.grads`; returns their loss sum and correct rows.
    fn loss_and_grad_of(
        &mut self,
        batch: &Batch,
        r: &Range<usize>,
        uploaded: bool,
        mode: BnMode,
    ) -> Result<(f64, usize), TrainError> {
        let total_rows = self.rows(batch.n);
        self.upload_part(batch, r, uploaded)?;
        self.ensure_logit_buffers(self.rows(r.len()))?;
        self.model
            .forward(&self.b, &self.params[0], &self.x, r.len(), mode)?;
        self.xent_backward(r.len(), Labels::True, total_rows, false)
    }

    /// The sharded state when the gradients are reduce-scattered (a group without `shards`):
    /// each rank then holds the sums of its own range of the arena only, zeros elsewhere.
    fn scattered(&self) -> Option<&ShardState> {
        match (&self.shard, &self.comm, self.cfg.shards) {
            (Some(sh), Some(_), None) => Some(sh),
            _ => None,
        }
    }

    /// The squared norm of the whole training gradient when it is reduce-scattered: each
    /// rank's sum of squares over its pieces (in `f64`), all-reduced.
    fn scattered_squared_norm(&mut self) -> CoreResult<Option<f64>> {
        let Some(cut) = self.scattered().map(|sh| sh.layout.cut_for(self.rank())) else {
            return Ok(None);
        };
        let b = &self.b;
        let k = cut.len() - 1;
        let mine = b.with_parts(&mut self.grads[0], &[], &cut, |g, _| {
            g[1..k]
                .iter()
                .try_fold(0f64, |acc, x| Ok(acc + b.sum_squares(x)? as f64))
        })?;
        let mut sum = [mine];
        self.comm().all_reduce_sum(BufMut::F64(&mut sum))?;
        Ok(Some(sum[0]))
    }

    /// Scales the training gradient to the clipping norm when it is larger. Reduce-scattered,
    /// the norm comes from every rank's partial sum of squares and each rank scales its range
    /// (the zeros elsewhere stay zeros); a non-finite norm is then seen by every rank alike.
    fn clip(&mut self) -> Result<(), TrainError> {
        let norm = match self.scattered_squared_norm()? {
            Some(sq) => sq.sqrt(),
            None => (self.b.sum_squares(&self.grads[0])? as f64).sqrt(),
        };
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
    /// micro-batches (and ranks) like the training gradient. Each micro-batch samples with its
    /// own rows of the step's uniforms, so the labels are those of one pass over the whole batch.
    fn estimator_pass(&mut self, batch: &Batch, uploaded: bool) -> Result<(), TrainError> {
        let total_rows = self.rows(batch.n);
        let u = self.estimator_uniforms(self.step, total_rows);
        let plan = self.plan(batch.n, self.cfg.grad_accum);
        let targets = Targets {
            train: false,
            est: true,
        };
        self.combined(plan, targets, |t, r| {
            t.upload_part(batch, r, uploaded)?;
            let mode = BnMode::Train {
                update_running: false,
            };
            t.estimator_backward(r, &u, total_rows, mode)?;
            Ok((0.0, 0))
        })?;
        Ok(())
    }

    /// The estimator's half of a pass over the examples `r` (already in the input buffers):
    /// forward, labels sampled from the logits with rows `r` of the step's uniforms `u`, and
    /// backward into `est_grads` with the loss gradient scaled by 1/`total_rows`.
    fn estimator_backward(
        &mut self,
        r: &Range<usize>,
        u: &[f32],
        total_rows: usize,
        mode: BnMode,
    ) -> Result<(), TrainError> {
        let c = self.model.num_classes();
        let (n, rows) = (r.len(), self.rows(r.len()));
        self.ensure_logit_buffers(rows)?;
        self.model
            .forward(&self.b, &self.params[0], &self.x, n, mode)?;
        let first = self.rows(r.start);
        self.b.upload(&mut self.uniforms, &u[first..first + rows])?;
        self.b.sample_labels(
            self.model.logits(),
            rows,
            c,
            &self.uniforms,
            &mut self.sampled,
        )?;
        self.xent_backward(n, Labels::Sampled, total_rows, true)?;
        Ok(())
    }

    /// The estimator pass and the training pass on one forward of the current batch: per
    /// micro-batch, one forward (batch-norm statistics updated), labels sampled from its
    /// logits with the step's uniforms and backward into `est_grads`, then the true labels and
    /// backward into `grads`. The same numbers as [`Self::estimator_pass`] followed by
    /// [`Self::loss_and_grad`], one forward pass fewer. Returns what `loss_and_grad` does.
    fn shared_pass(&mut self, batch: &Batch) -> Result<(f64, usize), TrainError> {
        let total_rows = self.rows(batch.n);
        let u = self.estimator_uniforms(self.step, total_rows);
        let plan = self.plan(batch.n, self.cfg.grad_accum);
        let targets = Targets {
            train: true,
            est: true,
        };
        let (loss_sum, correct) = self.combined(plan, targets, |t, r| {
            t.upload_part(batch, r, false)?;
            let mode = BnMode::Train {
                update_running: true,
            };
            t.estimator_backward(r, &u, total_rows, mode)?;
            t.xent_backward(r.len(), Labels::True, total_rows, false)
        })?;
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
            let plan = self.plan(batch.n, accum);
            self.loss_and_grad(
                &batch,
                plan,
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
            self.perturb(want_est)?;
            let plan = self.plan(batch.n, accum);
            self.loss_and_grad(
                &batch,
                plan,
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
        // In a data-parallel group every rank holds the same, all-reduced gradients and
        // estimator gradient here, so a replicated step (and IRE's threshold, selected locally
        // over the whole estimate) gives the same parameters and mask on every rank.
        // Sharded state: with `shards` the gradients were gathered by shard and each rank
        // slices its range, the very sums of a replicated run, so sharded equals replicated bit
        // for bit at any world size; without, they were reduce-scattered (each rank holds its
        // range's sums only; clipping took the norm from partial sums), equal within rounding.
        // IRE's threshold is the distributed selection either way.
        let (b, opt) = (&self.b, &mut self.opt);
        let comm: &dyn Collective = match &self.comm {
            Some(c) => c.as_ref(),
            None => &SingleProcess,
        };
        let (kappa, refreshed) = match (&self.shard, &self.groups) {
            // This rank's pieces of the arena as tensors of their own; then every rank's
            // stepped range is gathered.
            (Some(sh), _) => {
                let rank = comm.rank();
                let cut = sh.layout.cut_for(rank);
                let k = cut.len() - 1;
                let r = b.with_parts(&mut params[0], &arena_and(grads, est), &cut, |p, sh2| {
                    let est = sh2.get(1).map(|e| &e[1..k]);
                    opt.step(
                        b,
                        &mut p[1..k],
                        &sh2[0][1..k],
                        lr,
                        est,
                        sh.groups.as_ref(),
                        Some(comm),
                    )
                })?;
                gather_params(b, &mut params[0], &sh.layout, comm)?;
                r
            }
            (None, None) => opt.step(b, params, grads, lr, est, None, None)?,
            // The groups' parts of the arena as tensors of their own (no copy on the CPU).
            (None, Some(sg)) => {
                b.with_parts(&mut params[0], &arena_and(grads, est), &sg.lens, |p, sh| {
                    let est = sh.get(1).map(|e| &e[..]);
                    opt.step(b, p, &sh[0], lr, est, Some(&sg.groups), None)
                })?
            }
        };
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

    /// SAM's perturbation (SAM-IRE's refresh at the unperturbed θ first), with the training
    /// gradient and (`want_est`) the estimator's. Sharded state: each rank perturbs its own
    /// range with the norm of the whole gradient, then the ranges are all-gathered for the
    /// second pass. With `shards` every rank holds the whole gradient and takes the norm over
    /// the replicated run's tensors (the arena, or its groups' parts), so the same bits;
    /// reduce-scattered, the norm is every rank's partial sum of squares over its pieces
    /// (`f64`), all-reduced: the replicated norm up to the order of the additions.
    fn perturb(&mut self, want_est: bool) -> Result<(), TrainError> {
        let scattered = self.scattered().is_some();
        let est = want_est.then_some(&self.est_grads[..]);
        let (b, opt) = (&self.b, &mut self.opt);
        let Some(shard) = &self.shard else {
            match &self.groups {
                None => opt.perturb(b, &mut self.params, &self.grads, est)?,
                Some(sg) => {
                    let shared = arena_and(&self.grads, est);
                    b.with_parts(&mut self.params[0], &shared, &sg.lens, |p, sh| {
                        opt.perturb(b, p, &sh[0], sh.get(1).map(|e| &e[..]))
                    })?
                }
            }
            return Ok(());
        };
        let whole = match (&self.groups, scattered) {
            (_, true) => None,
            (None, false) => opt.sam_squared_norm(b, &self.params, &self.grads)?,
            (Some(sg), false) => {
                b.with_parts(&mut self.params[0], &[&self.grads[0]], &sg.lens, |p, sh| {
                    opt.sam_squared_norm(b, p, &sh[0])
                })?
            }
        };
        let comm: &dyn Collective = match &self.comm {
            Some(c) => c.as_ref(),
            None => &SingleProcess,
        };
        let cut = shard.layout.cut_for(comm.rank());
        let k = cut.len() - 1;
        b.with_parts(
            &mut self.params[0],
            &arena_and(&self.grads, est),
            &cut,
            |p, sh| {
                let sq = if scattered {
                    let mut sum = [opt
                        .sam_squared_norm(b, &p[1..k], &sh[0][1..k])?
                        .unwrap_or(0.0)];
                    comm.all_reduce_sum(BufMut::F64(&mut sum))?;
                    sum[0]
                } else {
                    whole.unwrap_or(0.0)
                };
                let est = sh.get(1).map(|e| &e[1..k]);
                opt.perturb_sharded(b, &mut p[1..k], &sh[0][1..k], est, sq, comm)
            },
        )?;
        gather_params(b, &mut self.params[0], &shard.layout, comm)?;
        Ok(())
    }

    /// The training loss the next step will see (its batch at the current parameters, batch
    /// norm on batch statistics, running ones unchanged), without taking the step: a
    /// checkpoint is only written from parameters where it is finite.
    pub fn next_loss(&mut self) -> Result<f64, TrainError> {
        let batch = self.data.train_batch(self.step);
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
            let (loss, _) = self.loss_of_last_forward(rows, self.cfg.label_smoothing)?;
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
                    Plan::Local(Batch::micro_ranges(batch.n, 1)),
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
        for batch in &batches {
            let rows = self.rows(batch.n);
            self.ensure_logit_buffers(rows)?;
            self.upload(batch)?;
            self.model
                .forward(&self.b, &self.params[0], &self.x, batch.n, BnMode::Eval)?;
            let (l, k) = self.loss_of_last_forward(rows, 0.0)?;
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
