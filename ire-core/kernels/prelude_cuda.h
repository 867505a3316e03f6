/* CUDA prelude of the portable IRE kernel source (prepended by the host, compiled by NVRTC).
 * The host compiles with --fmad=false, --prec-div=true and --prec-sqrt=true so that
 * element-wise results equal the reference backend's bit for bit. */
#define KERNEL extern "C" __global__
#define GLOBAL
#define LOCAL_ARRAY(type, name, size) __shared__ type name[size]
#define DEVICE_FN __device__ inline
#define INDEX unsigned long long
#define U8 unsigned char
#define U32 unsigned int
#define U64 unsigned long long
#define GLOBAL_ID ((INDEX)blockIdx.x * (INDEX)blockDim.x + (INDEX)threadIdx.x)
#define GLOBAL_SIZE ((INDEX)gridDim.x * (INDEX)blockDim.x)
#define LOCAL_ID ((U32)threadIdx.x)
#define GROUP_ID ((U32)blockIdx.x)
#define BARRIER() __syncthreads()
#define ATOMIC_ADD_U32(ptr, v) atomicAdd((ptr), (v))
#ifdef IRE_F64
#define SQRT(x) sqrt(x)
#define FABS(x) fabs(x)
#else
#define SQRT(x) sqrtf(x)
#define FABS(x) fabsf(x)
#endif
#define BITS_F32(x) __float_as_uint(x)
#define BITS_F64(x) ((unsigned long long)__double_as_longlong(x))
