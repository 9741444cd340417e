package streamserve.bench;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.FloatBuffer;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The Kafka Streams peer of {@code python -m benchmarks stream --peers kafka-streams}.
 *
 * <p>What a Kafka Streams user would write: {@code stream(in).mapValues(predict).to(out)}, one
 * ONNX Runtime call per record. A record is TF Serving columnar JSON {@code {"id": i, "inputs":
 * {"x": [[...]]}}} (every input a float32 matrix); the output is {@code {"id": i, "outputs":
 * {"y": [[...]]}}}, keyed like the input.
 *
 * <p>Arguments: {@code BOOTSTRAP INPUT OUTPUT APPLICATION_ID MODEL_ONNX GUARANTEE
 * COMMIT_INTERVAL_MS} with GUARANTEE {@code exactly-once} or {@code at-least-once}. Prints
 * {@code peer ready:} once started, {@code peer first call at MS} at the first model call and
 * {@code peer model calls: N} when it stops (SIGTERM).
 */
public final class App {
  private static final ObjectMapper MAPPER = new ObjectMapper();

  private App() {}

  /** One ONNX Runtime session; {@link #apply} decodes, predicts one record, encodes. */
  static final class Model {
    final OrtEnvironment env = OrtEnvironment.getEnvironment();
    final OrtSession session;
    final AtomicLong calls = new AtomicLong();

    Model(String path) throws OrtException {
      OrtSession.SessionOptions options = new OrtSession.SessionOptions();
      options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
      // The same session settings as streamserve's embedded runtime.
      options.addConfigEntry("session.intra_op.allow_spinning", "0");
      session = env.createSession(path, options);
    }

    byte[] apply(byte[] value) {
      try {
        JsonNode document = MAPPER.readTree(value);
        Map<String, OnnxTensor> feeds = new HashMap<>();
        try {
          var inputs = document.get("inputs").fields();
          while (inputs.hasNext()) {
            var entry = inputs.next();
            feeds.put(entry.getKey(), matrix(entry.getValue()));
          }
          if (calls.getAndIncrement() == 0) {
            System.out.println("peer first call at " + System.currentTimeMillis());
          }
          ObjectNode outputs = MAPPER.createObjectNode();
          try (OrtSession.Result result = session.run(feeds)) {
            for (Map.Entry<String, ai.onnxruntime.OnnxValue> output : result) {
              outputs.set(output.getKey(), MAPPER.valueToTree(output.getValue().getValue()));
            }
          }
          ObjectNode answer = MAPPER.createObjectNode();
          answer.set("id", document.get("id"));
          answer.set("outputs", outputs);
          return MAPPER.writeValueAsBytes(answer);
        } finally {
          for (OnnxTensor tensor : feeds.values()) {
            tensor.close();
          }
        }
      } catch (IOException error) {
        throw new UncheckedIOException(error);
      } catch (OrtException error) {
        throw new IllegalStateException(error);
      }
    }

    private OnnxTensor matrix(JsonNode rows) throws OrtException {
      int height = rows.size();
      int width = height == 0 ? 0 : rows.get(0).size();
      FloatBuffer buffer = FloatBuffer.allocate(height * width);
      for (JsonNode row : rows) {
        for (JsonNode cell : row) {
          buffer.put(cell.floatValue());
        }
      }
      buffer.flip();
      return OnnxTensor.createTensor(env, buffer, new long[] {height, width});
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 7) {
      System.err.println(
          "usage: App BOOTSTRAP INPUT OUTPUT APPLICATION_ID MODEL_ONNX GUARANTEE COMMIT_INTERVAL_MS");
      System.exit(2);
    }
    Model model = new Model(args[4]);
    Properties props = new Properties();
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
    props.put(
        StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
        args[5].equals("exactly-once") ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args[6]));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(args[1], Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .mapValues(model::apply)
        .to(args[2], Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close(Duration.ofSeconds(20));
                  System.out.println("peer model calls: " + model.calls.get());
                  System.out.flush();
                  stopped.countDown();
                }));
    streams.setUncaughtExceptionHandler(
        error -> {
          error.printStackTrace();
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
              .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
    streams.start();
    System.out.println("peer ready: kafka-streams " + args[5]);
    System.out.flush();
    stopped.await();
  }
}
