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
/* Math for extension programs (the neural-network kernels); not used by the IRE ops. These
 * are not correctly rounded, so results that go through them match the host within a
 * tolerance, not bit for bit. */
#ifdef IRE_F64
#define EXP(x) exp(x)
#define LOG(x) log(x)
#define ERF(x) erf(x)
#define TANH(x) tanh(x)
#define SIN(x) sin(x)
#define COS(x) cos(x)
#define POW(x, y) pow((x), (y))
#define FMAX(x, y) fmax((x), (y))
#define FLOOR(x) floor(x)
#else
#define EXP(x) expf(x)
#define LOG(x) logf(x)
#define ERF(x) erff(x)
#define TANH(x) tanhf(x)
#define SIN(x) sinf(x)
#define COS(x) cosf(x)
#define POW(x, y) powf((x), (y))
#define FMAX(x, y) fmaxf((x), (y))
#define FLOOR(x) floorf(x)
#endif
