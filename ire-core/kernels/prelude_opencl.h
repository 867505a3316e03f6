/* OpenCL prelude of the portable IRE kernel source (prepended by the host).
 * FP contraction is off so that `a*b + c` is never fused into an FMA: element-wise
 * results then equal the reference backend's bit for bit. The host also builds with
 * -cl-fp32-correctly-rounded-divide-sqrt so that `/` and sqrt are correctly rounded. */
#pragma OPENCL FP_CONTRACT OFF
#ifdef IRE_F64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#define KERNEL __kernel
#define GLOBAL __global
#define LOCAL_ARRAY(type, name, size) __local type name[size]
#define DEVICE_FN inline
#define INDEX ulong
#define U8 uchar
#define U32 uint
#define U64 ulong
#define GLOBAL_ID ((INDEX)get_global_id(0))
#define GLOBAL_SIZE ((INDEX)get_global_size(0))
#define LOCAL_ID ((uint)get_local_id(0))
#define GROUP_ID ((uint)get_group_id(0))
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE)
#define ATOMIC_ADD_U32(ptr, v) atomic_add((ptr), (v))
#define SQRT(x) sqrt(x)
#define FABS(x) fabs(x)
#define BITS_F32(x) as_uint(x)
#define BITS_F64(x) as_ulong(x)
/* Math for extension programs (the neural-network kernels); not used by the IRE ops. These
 * are not correctly rounded, so results that go through them match the host within a
 * tolerance, not bit for bit. */
#define EXP(x) exp(x)
#define LOG(x) log(x)
#define ERF(x) erf(x)
#define TANH(x) tanh(x)
#define SIN(x) sin(x)
#define COS(x) cos(x)
#define POW(x, y) pow((x), (y))
#define FMAX(x, y) fmax((x), (y))
#define FLOOR(x) floor(x)
