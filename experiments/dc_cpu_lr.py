"""How the `cpu` preset's lr_img of DC was chosen: MNIST 1 img/cls, validation on held-out *training* images.

The last 1000 training images are held out; DC distils from the other 59000 and 5 fresh ConvNets
(width 16, protocol 'dc' with MNIST augmentation, 100 epochs) are scored on the held-out images.
The test split is never used. Each argument is ``lr,iterations,outer_loop,inner_loop[,batch_real]``
(batch_real 32 when omitted).

    JAXDD_DATA_DIR=/work/shared/data nice -n 10 python -m experiments.dc_cpu_lr 1.0,100,1,1 0.1,10,10,1 3.0,100,1,1

Measured (2 shared CPU cores): lr 1.0 / 100 it: 79.3 +- 3.5 %; lr 0.1 / 10 it x outer 10: 66.7 +- 2.2 %;
lr 3.0 / 100 it: 79.8 +- 2.9 %. After the CPU convolution got faster, the `cpu` preset moved to
1000 iterations with a real batch of 64: lr 1.0 / 1000 it / batch 64: 82.9 +- 2.5 % (626 s under
load). The paper's lr 0.1 with batch 256 was started but not finished for lack of CPU time.
"""

from __future__ import annotations

import sys
import time

import jax

from jaxdd import data, distill, models
from jaxdd.evaluate import evaluate_synset, get_protocol
from jaxdd.methods import dc


def main() -> None:
    dataset = data.load_dataset("mnist", data.resolve_data_dir(None))
    x_train, y_train = dataset.x_train[:59000], dataset.y_train[:59000]
    x_val, y_val = dataset.x_train[59000:], dataset.y_train[59000:]
    model = models.get_model("ConvNet", (28, 28, 1), 10, width=16)
    protocol = get_protocol("dc", "mnist", epochs=100)
    for arg in sys.argv[1:]:
        lr, iterations, outer, inner, batch_real = (arg.split(",") + ["32"])[:5]
        config = dc.DCConfig(
            num_classes=10, ipc=1, iterations=int(iterations), batch_real=int(batch_real), init="real", lr_img=float(lr),
            outer_loop=int(outer), inner_loop=int(inner),
        )
        method = dc.build(model, x_train, y_train, config)
        started = time.time()
        synset = method.to_synset(distill.run(method, jax.random.key(1), progress=False))
        result = evaluate_synset(jax.random.key(2), model, synset.images, synset.labels, x_val, y_val, protocol, 5)
        print(f"{arg}: validation {100 * result.mean:.1f} +- {100 * result.std:.1f} % ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
