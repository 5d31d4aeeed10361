"""Gradient all-reduce whose result does not depend on DDP's bucket layout.

DDP reduces gradients in buckets. A fresh process group starts with one bucket holding every
parameter in registration order, and after the first backward DDP rebuilds the buckets in the order
the gradients became ready (a 1 MB first bucket, then 25 MB ones). Ring all-reduces (gloo, NCCL)
split a buffer into one chunk per rank and sum each chunk starting from a different rank, so with
three or more ranks the order in which an element's partial sums are added depends on where the
element sits in its bucket. The first step after a resume therefore used another summation order
than the same step of an uninterrupted run (whose buckets were rebuilt long before), and the weights
drifted apart in the last bits. With two ranks every element is ``a + b``, which is commutative, so
the layout never mattered there.

:func:`per_tensor_allreduce` reduces each gradient as its own tensor: the summation order of an
element then depends only on that tensor's size and the world size, the same in every process
whatever the buckets are, and a resume is bitwise exact at any world size. The cost is one
collective per parameter tensor instead of one per bucket, issued asynchronously as each bucket is
ready, so they still overlap with the backward pass.
"""

import torch
import torch.distributed as dist


def per_tensor_allreduce(
    group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the average over ranks of each gradient of ``bucket``, one all-reduce each.

    Register with ``ddp.register_comm_hook(group, per_tensor_allreduce)`` (DDP reads the annotations at
    run time, so this module does not postpone them).
    """
    buffer = bucket.buffer()
    world = dist.get_world_size(group)
    buffer.div_(world)
    base, size = buffer.data_ptr(), buffer.element_size()
    works = []
    for gradient in bucket.gradients():
        offset = (gradient.data_ptr() - base) // size
        # A flat, contiguous slice of the bucket: the gradient's own elements, whatever its memory format.
        works.append(dist.all_reduce(buffer.narrow(0, offset, gradient.numel()), group=group, async_op=True))
    done = torch.futures.collect_all([work.get_future() for work in works])
    return done.then(lambda _: buffer)


def needs_layout_free_reduction(world_size: int) -> bool:
    """Whether the bucket layout can change the sum: with one or two ranks it cannot (``a + b == b + a``)."""
    return world_size > 2
