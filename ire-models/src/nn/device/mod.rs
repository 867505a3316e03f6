//! The neural-network operations on every device runtime (OpenCL, CUDA, any other), written
//! once for [`ire_core::DeviceBackend`]: the kernels are in the portable dialect
//! (`ire-models/kernels/*.cl`, the same C as the IRE ops) and the host side here only checks
//! sizes, picks launch geometry and orders the launches. Nothing is downloaded inside an op
//! except the two scalars `softmax_xent` returns.
//!
//! - `cnn`: [`crate::nn::ConvNetOps`] (GEMM, convolution, batch norm, pooling, activations);
//! - `tf`: [`crate::nn::TransformerOps`] (norms, attention, RoPE, SwiGLU, embeddings);
//! - `loss`: [`crate::nn::LossOps`] (softmax cross-entropy, label sampling, dropout).

mod cnn;
mod kernels;
mod loss;
mod tf;

pub use super::tolerances::{CNN_TOLERANCES, LOSS_TOLERANCES, TF_TOLERANCES};
pub use kernels::NN_KERNELS;

#[cfg(test)]
mod tests {
    use ire_core::kernels::kernel_names_in;

    #[test]
    fn every_kernel_is_launched_by_some_op() {
        let hosts = [
            include_str!("cnn.rs"),
            include_str!("tf.rs"),
            include_str!("loss.rs"),
        ];
        for name in kernel_names_in(super::kernels::NN_KERNELS.source) {
            let quoted = format!("\"{name}\"");
            assert!(
                hosts.iter().any(|h| h.contains(&quoted)),
                "kernel {name} is defined but no op launches it"
            );
        }
    }
}
