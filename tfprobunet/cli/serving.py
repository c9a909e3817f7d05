"""The commands that serve: `export` (a TF Serving version), `serve` (the local TF Serving
stand-in) and `predict` (image files, here or through a server)."""

import os

from tfprobunet.cli import flags
from tfprobunet.defaults import (GRPC_QUEUE, MAX_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_SAMPLE_BYTES,
                                 MAX_VERSION, REST_BACKLOG, REST_QUEUE)

# The ranges of the serving flags: a port (0: any free one, the server prints which), threads
# answering at once, requests or connections waiting, seconds (between scans, for a request to
# arrive), a version and a byte limit an export records (TF Serving's int64; a gRPC message's
# is int32, `flags.COUNT`).
PORT = flags.number(0, 65535, integer=True)
WORKERS = flags.number(1, 1024, integer=True)
QUEUE = flags.number(1, 65535, integer=True)
SECONDS = flags.number(maximum=3600, above=0)
VERSION = flags.number(1, MAX_VERSION, integer=True)
BYTES = flags.number(1, MAX_VERSION, integer=True)


def add_parsers(commands):
    """Add `export`, `serve` and `predict` to the subparsers `commands`."""
    export = commands.add_parser("export", help="write a .keras model as a TF Serving version")
    export.add_argument("--model", help="a saved .keras model")
    export.add_argument("--clean", action="store_true",
                        help="remove what killed exports of --name left (every export does "
                             "this too); alone, only that")
    export.add_argument("--base-dir", default="saved_models", help="TF Serving model base path")
    export.add_argument("--name", default="probunet", help="the served model's name")
    export.add_argument("--version", type=VERSION, help="default: the next free integer")
    flags.add_limit_flags(export, "recorded in the export")
    _add_sample_bytes_flag(export, "recorded in the export")
    export.add_argument("--image-range", type=flags.image_range, default=(0.0, 1.0),
                        metavar="LOW,HIGH",
                        help="the pixel values the model was trained on (default 0,1, every "
                             "built-in loader's); requests beyond it by more than half of it "
                             "are refused with the conversion; 'any' accepts any finite values")
    export.set_defaults(run=_export)
    serve = commands.add_parser("serve", help="a local TF Serving stand-in (gRPC + REST)")
    serve.add_argument("--model-base-path", default="saved_models")
    serve.add_argument("--port", type=PORT, default=8500, help="gRPC port (0: any free one)")
    serve.add_argument("--rest-port", type=PORT, default=8501, help="REST port (0: any free one)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--workers", type=WORKERS, default=4,
                       help="gRPC requests answered at once (each may take ~1 GB at the limits)")
    serve.add_argument("--rest-workers", type=WORKERS, default=2,
                       help="REST requests parsed, answered and sent at once; more wait, "
                            "then 503")
    serve.add_argument("--poll-seconds", type=SECONDS, default=1.0,
                       help="seconds between scans for new versions")
    flags.add_limit_flags(serve, "on top of each export's own")
    _add_sample_bytes_flag(serve, "on top of each export's own")
    serve.add_argument("--max-message-bytes", type=flags.COUNT, default=MAX_MESSAGE_BYTES,
                       help="the largest gRPC message (both ways) and response")
    serve.add_argument("--max-body-bytes", type=flags.COUNT, default=MAX_BODY_BYTES,
                       help="the largest REST request body")
    serve.add_argument("--request-timeout", type=SECONDS, default=30.0,
                       help="seconds a REST client may take to send its request")
    serve.add_argument("--rest-queue", type=QUEUE, default=REST_QUEUE,
                       help="REST requests in flight (read, waiting or answered); more get 503 "
                            "with Retry-After at once")
    serve.add_argument("--rest-backlog", type=QUEUE, default=REST_BACKLOG,
                       help="connections the kernel queues before the REST server accepts them")
    serve.add_argument("--grpc-queue", type=QUEUE, default=GRPC_QUEUE,
                       help="gRPC calls in flight (answered or waiting); more get "
                            "RESOURCE_EXHAUSTED at once")
    serve.set_defaults(run=_serve)
    _add_predict_parser(commands)


def _add_sample_bytes_flag(parser, whose):
    parser.add_argument("--max-sample-bytes", type=BYTES, default=MAX_SAMPLE_BYTES,
                        help=f"{whose}: the most bytes of class probabilities (b*m*h*w*K*4) "
                             "one request's samples may take")


def _add_predict_parser(commands):
    predict = commands.add_parser(
        "predict", help="segment image files of any size, here with --model X.keras or "
                        "through a server with --target HOST:PORT: sides the U-Net cannot "
                        "divide are padded, and the masks cropped back")
    predict.add_argument("--model", help="a saved .keras model: predict here, without a server")
    predict.add_argument("--target", metavar="HOST:PORT",
                         help="a gRPC server (TF Serving or `tfprobunet serve`) to predict "
                              "through instead: the same masks as --model for the same --seed "
                              "(an export older than its `info` signature takes only the sizes "
                              "its U-Net divides)")
    predict.add_argument("--name", help="with --target: the served model's name (default: "
                                        "probunet)")
    predict.add_argument("--version", type=VERSION,
                         help="with --target: the served version")
    predict.add_argument("--image", nargs="+", required=True, help="PNG or JPEG files")
    predict.add_argument("-n", "--num-samples", type=flags.COUNT, default=16,
                         help="segmentations per image, at most --max-samples (default: 16)")
    predict.add_argument("--seed", type=flags.SEED)
    whose = "checked on each image's header before it is read (as the server checks a request)"
    flags.add_limit_flags(predict, whose)
    _add_sample_bytes_flag(predict, f"{whose}; with --model")
    predict.add_argument("--out", required=True,
                         help="folder: OUT/<image name>/sample_00.png, ..., uncertainty.png")
    predict.set_defaults(run=_predict)


def _export(args):
    from tfprobunet.serving import export

    export.check_model_name(args.name, "--name")  # the library checks too; this names the flag
    if args.clean:
        removed = export.clean_stale_exports(args.base_dir, args.name)
        print(f"removed {len(removed)} temporary folder(s) of killed exports of {args.name!r}"
              + "".join(f"\n  {path}" for path in removed))
    if args.model is None:
        if not args.clean:
            raise flags.CommandError("--model PATH (a .keras model) is required unless --clean "
                                     "is given alone.")
        return
    if not os.path.exists(args.model):
        raise flags.CommandError(f"no model at {args.model!r}; pass a .keras file saved by "
                                 "`tfprobunet train` or `model.save`.")
    path = export.export_for_serving(args.model, args.base_dir, args.name, args.version,
                                     image_range=args.image_range,
                                     max_sample_bytes=args.max_sample_bytes, **flags.limits(args))
    print(f"exported {args.model} to {path}; "
          f"TF Serving config: {os.path.join(args.base_dir, export.MODELS_CONFIG)}")


def _serve(args):
    from tfprobunet import serving

    server = serving.ModelServer(
        args.model_base_path, port=args.port, rest_port=args.rest_port, host=args.host,
        max_workers=args.workers, rest_workers=args.rest_workers,
        poll_seconds=args.poll_seconds, max_message_bytes=args.max_message_bytes,
        max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
        max_sample_bytes=args.max_sample_bytes, rest_queue=args.rest_queue,
        rest_backlog=args.rest_backlog, grpc_queue=args.grpc_queue, **flags.limits(args)).start()
    print(f"serving {args.model_base_path}: gRPC {args.host}:{server.port}, REST "
          f"http://{args.host}:{server.rest_port} (Ctrl-C stops)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


def _predict(args):
    from tfprobunet import prediction, serving

    if args.num_samples > args.max_samples:  # before a model or an image is read
        raise flags.CommandError(
            f"--num-samples {args.num_samples} is above --max-samples {args.max_samples}: ask "
            "for fewer samples per run, or raise --max-samples.")
    if (args.model is None) == (args.target is None):
        raise flags.CommandError(
            "give either --model PATH (a .keras model: predict here, no server) or --target "
            "HOST:PORT with --name NAME (a served model). Received: --model "
            f"{args.model!r}, --target {args.target!r}")
    if args.model is not None:
        if args.name is not None or args.version is not None:
            raise flags.CommandError("--name and --version select a served model: use them "
                                     "with --target HOST:PORT, not with --model.")
        from tfprobunet.data import volumes

        if any(map(volumes.is_volume, args.image)):  # NIfTI files, DICOM series folders
            # sliced and scaled as the training run's data_options say
            files = volumes.predict_volumes(args.model, args.image, args.out, args.num_samples,
                                            args.seed, max_sample_bytes=args.max_sample_bytes)
        else:
            files = prediction.predict_files(args.model, args.image, args.num_samples,
                                             args.out, args.seed, **_predict_limits(args))
    else:
        with serving.GrpcClient(args.target, args.name or "probunet",
                                version=args.version) as client:
            files = prediction.predict_files(client, args.image, args.num_samples, args.out,
                                             args.seed, **_predict_limits(args))
    print(f"wrote {len(files) - len(args.image)} sample masks and {len(args.image)} uncertainty "
          f"map(s) to {args.out}")


def _predict_limits(args):
    """`predict_files`' limits: the request limits' flags and --max-sample-bytes."""
    return {**flags.limits(args), "max_sample_bytes": args.max_sample_bytes}
