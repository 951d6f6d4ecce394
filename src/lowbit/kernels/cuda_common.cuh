// Definitions that lowbit's CUDA kernels (cuda_mma.cu, cuda_aqlm.cu) share; nvrtc.py compiles this text ahead of
// each kernel's source. BF16 (a -D setting): the activations are bf16, else fp16.

typedef unsigned int u32;
typedef unsigned short u16;

#ifndef PDL
#define PDL 0
#endif

// A kernel's __launch_bounds__: WARPS warps a block and, with the -D setting MIN_BLOCKS, the blocks a multiprocessor
// must hold at once (capping the registers a thread may use). MIN_BLOCKS 1 is not the same as none: without a
// count ptxas keeps registers lower, as if blocks were to share a multiprocessor (cuda_mma.py's ONE_BLOCK, kern30).
#ifdef MIN_BLOCKS
#define LAUNCH_BOUNDS __launch_bounds__(WARPS * 32, MIN_BLOCKS)
#else
#define LAUNCH_BOUNDS __launch_bounds__(WARPS * 32)
#endif

// Programmatic dependent launch (PDL, compute capability 9.0; the -D setting PDL and nvrtc.launch's attribute): the
// kernel may start while the one before it in the stream finishes. Whatever that kernel may write (activations,
// outputs, partials, counters) is touched only after grid_dependency_wait(); before it a kernel prefetches its
// weights into L2, which is where writes meet, so the prefetch never yields stale data, and loads them only where
// the host knows that no kernel ahead wrote them (cuda_mma.cu's PRELOAD, settled_weights.py). launch_dependents()
// lets the next launch start once every block of this one has called it.
__device__ __forceinline__ void grid_dependency_wait() {
#if PDL && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if PDL && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Thread-block clusters (compute capability 9.0): the blocks of a cluster meet at cluster_sync() (every thread of
// every block; what each wrote before it is visible to all after it) and read each other's shared memory (DSMEM).
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ float cluster_load(const float* mine, u32 rank) {  // `mine`'s place in block `rank`
  float v = 0.f;
#if __CUDA_ARCH__ >= 900
  u32 at;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(at) : "r"((u32)__cvta_generic_to_shared(mine)), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(at) : "memory");
#endif
  return v;
}

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }

__device__ __forceinline__ float half_f32(u16 h) {  // fp16 -> fp32 (the qparams are fp16)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ u16 f32_act(float f) {  // fp32 -> the activations' 16-bit type, round to nearest
  u16 h;
#if BF16
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
  return h;
}

__device__ __forceinline__ void mma16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if BF16
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#endif
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Value v of a block's results summed over its WARPS warps (red[w][v]: warp w's share of the block's outputs).
template <int WARPS_, int NVALS_>
__device__ __forceinline__ float warps_sum(const float (*red)[NVALS_], int v) {
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < WARPS_; ++w) sum += red[w][v];
  return sum;
}

__device__ __forceinline__ float load_cg(const float* p) {  // bypass L1: other blocks wrote it
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

// Output n of activation row m from `splits` fp32 partials (arrays of `total` = rows x N values in part, written
// by other blocks): added up in split order, scaled by scales[n] (unless null), the bias added, written to y.
__device__ __forceinline__ void sum_partial(const float* part, int splits, long long total, int m, int n, int N,
                                            const u16* scales, const float* bias, int has_bias, u16* y) {
  float sum = 0.f;
  for (int s = 0; s < splits; ++s) sum += load_cg(part + s * total + (long long)m * N + n);
  if (scales) sum *= half_f32(scales[n]);
  if (has_bias) sum += bias[n];
  y[(long long)m * N + n] = f32_act(sum);
}

// The fix-up of split partials (as stream-K GEMMs', Osama et al. 2023), called by every thread of a block once its
// partial of outputs [n0, n0 + span) of `rows` rows is in part: the last of the `splits` blocks to arrive at
// counters[slot] adds the partials up (sum_partial) and resets the counter for the next launch. THREADS: the
// block's. No barrier after it.
template <int THREADS>
__device__ __forceinline__ void add_up_partials(const float* part, int* counters, u32 slot, int splits, int rows,
                                                int N, int n0, int span, const u16* scales, const float* bias,
                                                int has_bias, u16* y) {
  __shared__ int last_block;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_block = atomicAdd(&counters[slot], 1) == splits - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  for (int v = threadIdx.x; v < rows * span; v += THREADS) {
    const int m = v / span, n = n0 + v % span;
    if (n < N) sum_partial(part, splits, (long long)rows * N, m, n, N, scales, bias, has_bias, y);
  }
  if (threadIdx.x == 0) counters[slot] = 0;  // ready for the next launch
}
